// Command khib is kexec-based hibernation for Linux. One static binary is
// both the command-line tool of the running system and the /init of the
// helper kernels; as PID 1 it takes its role from the kernel command line.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

const usage = `khib - kexec-based hibernation for Linux

Usage:
  khib check [--json]                  can this machine use khib? what is missing?
  khib check --jump [--json] [--fresh] [--kernel FILE]
                                       jump into the helper kernel and back, writing nothing
  khib hibernate [--target SPEC] [--codec s2|zstd] [--return] [--json]
                                       save this system's memory to SPEC (default: target in
                                       /etc/khib.conf) and power off
  khib hibernate --systemd             the same, as systemd-hibernate.service (system-sleep hooks)
  khib prepare --target file:PATH [--size SIZE] | swap:PATH
                                       make a file or swap target ready; print how the next
                                       boot finds it (khib.resume=)
  khib configure --target SPEC [--codec ...]
                                       write /etc/khib.conf and update the initramfs
  khib resume-stage1 [--config FILE]   stage 1 of a resume, from the initramfs (boot script)
  khib image inspect [--json] DEV|FILE show an image's header, page counts and size
  khib image verify DEV|FILE           check every checksum of an image
  khib arm [--kernel FILE]             boot the helper ahead of time and park it
  khib disarm                          unload the helper
  khib status [--json]                 is a helper loaded or parked, and what it costs

khib moves a running system (A) into a helper kernel that was loaded into a
memory region reserved at boot (crashkernel=), using a kexec jump that can
return. Run 'khib COMMAND --help' for the details of a command.

As PID 1, khib is the helpers' init (khib.role=helper|restore), or, with
khib.resume=DEV on the kernel command line, the first stage of a resume; it
then hands over to the system's init (khib.init=PATH, default /sbin/init).
The helper kernels print where this system's console is, but quietly:
errors only (loglevel=4), whatever its own loglevel; khib.helper_loglevel=N
on the kernel command line gives them loglevel=N (8 for every message).

Exit status: 0 on success, 1 when the command failed or the answer is no,
2 on a usage error.
`

func main() {
	if os.Getpid() == 1 {
		runInit()
		return
	}
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	var code int
	switch cmd {
	case "check":
		code = cmdCheck(args)
	case "hibernate":
		code = cmdHibernate(args)
	case "configure":
		code = cmdConfigure(args)
	case "prepare":
		code = cmdPrepare(args)
	case "resume-stage1":
		code = cmdResumeStage1(args)
	case "image":
		code = cmdImage(args)
	case "arm":
		code = cmdArm(args)
	case "disarm":
		code = cmdDisarm(args)
	case "status":
		code = cmdStatus(args)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "khib: unknown command %q\n\n%s", cmd, usage)
		code = 2
	}
	os.Exit(code)
}

// fail prints a one-line reason and returns exit status 1.
func fail(format string, a ...any) int {
	fmt.Fprintf(os.Stderr, "khib: "+format+"\n", a...)
	return 1
}

// parseFlags parses a subcommand's arguments. When ok is false the
// command is over and exits with code: 0 after --help, 2 after a bad flag,
// which the flag package has reported with the usage text.
func parseFlags(fs *flag.FlagSet, args []string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	return 0, true
}
