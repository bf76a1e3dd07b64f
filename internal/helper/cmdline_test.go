package helper

import "testing"

func TestCmdlineFor(t *testing.T) {
	for _, tc := range []struct {
		name, a, role, extra, want string
	}{
		{
			name: "rig: console carried, A's loglevel not",
			a:    "console=ttyS0 earlyprintk=serial loglevel=8 panic=-1 no_console_suspend rdinit=/init crashkernel=256M khib.resume=/dev/vda",
			role: "restore", extra: "khib.image=abc",
			want: "console=ttyS0 earlyprintk=serial panic=-1 no_console_suspend loglevel=4 nokaslr no_timer_check khib.role=restore khib.image=abc",
		},
		{
			name: "quiet distro line",
			a:    "BOOT_IMAGE=/vmlinuz root=UUID=x ro quiet crashkernel=256M",
			role: "helper",
			want: "loglevel=4 nokaslr no_timer_check khib.role=helper",
		},
		{
			name: "khib.helper_loglevel asks for a verbose helper",
			a:    "console=ttyS0 quiet khib.helper_loglevel=8",
			role: "helper", extra: "khib.mailbox=0x1000",
			want: "console=ttyS0 loglevel=8 nokaslr no_timer_check khib.role=helper khib.mailbox=0x1000",
		},
		{
			name: "the last khib.helper_loglevel wins",
			a:    "khib.helper_loglevel=8 khib.helper_loglevel=1",
			role: "helper",
			want: "loglevel=1 nokaslr no_timer_check khib.role=helper",
		},
		{
			name: "a bad khib.helper_loglevel leaves the default",
			a:    "khib.helper_loglevel=loud khib.helper_loglevel=16 khib.helper_loglevel=-1 khib.helper_loglevel=",
			role: "helper",
			want: "loglevel=4 nokaslr no_timer_check khib.role=helper",
		},
		{
			name: "ignore_loglevel and printk.time carried",
			a:    "console=tty0 console=ttyS1,115200 ignore_loglevel printk.time=1 debug",
			role: "restore",
			want: "console=tty0 console=ttyS1,115200 ignore_loglevel printk.time=1 loglevel=4 nokaslr no_timer_check khib.role=restore",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := cmdlineFor(tc.a, tc.role, tc.extra); got != tc.want {
				t.Errorf("cmdlineFor(%q)\n got %q\nwant %q", tc.a, got, tc.want)
			}
		})
	}
}
