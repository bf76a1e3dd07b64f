package elfcore_test

import (
	"fmt"

	"github.com/khib/khib/internal/elfcore"
)

func ExampleParseVmcoreinfo() {
	v, err := elfcore.ParseVmcoreinfo([]byte("OSRELEASE=6.12.17\nPAGESIZE=4096\nSYMBOL(mem_section)=ffff88807ffd2000\nOFFSET(page.flags)=0\n"))
	if err != nil {
		panic(err)
	}
	rel, _ := v.OSRelease()
	ms, _ := v.Symbol("mem_section")
	_, err = v.Size("page")
	fmt.Println(rel)
	fmt.Printf("%#x\n", ms)
	fmt.Println(err)
	// Output:
	// 6.12.17
	// 0xffff88807ffd2000
	// vmcoreinfo: no SIZE(page): key not in vmcoreinfo
}

func ExampleBuild() {
	hdr, err := elfcore.Build(elfcore.Headers{
		RAM: []elfcore.Load{
			// A's low memory, which the helper reuses, copied into R.
			{PhysAddr: 0x1000, Size: 0x9e000, Offset: 0x2f001000},
			{PhysAddr: 0x100000, Size: 0x7fe00000, Offset: 0x100000},
		},
		VmcoreinfoAddr: 0x7fb2b000, VmcoreinfoSize: 0x1024,
	})
	fmt.Println(len(hdr), err)
	// Output: 232 <nil>
}
