package main

import (
	"bytes"
	"encoding/base64"
	"runtime/pprof"
)

// ProfileParam, on the kernel command line of A or of the boot that
// resumes, makes the helpers profile their work (B's save, C's restore)
// and print the CPU profile on the console, base64 between the lines
// "khib-profile: begin ROLE" and "khib-profile: end ROLE", for
// `go tool pprof`. It is for finding where a helper's time goes under a
// given machine (the rig's TCG guests); it costs about a second of console
// output and is off by default.
const ProfileParam = "khib.profile"

// helperProfile is a CPU profile in progress; the zero value profiles
// nothing.
type helperProfile struct {
	role string
	buf  *bytes.Buffer
}

// startProfile starts a CPU profile when the kernel command line asks for
// one.
func startProfile(role string) helperProfile {
	if kernelParams()[ProfileParam] != "1" {
		return helperProfile{}
	}
	p := helperProfile{role: role, buf: new(bytes.Buffer)}
	if err := pprof.StartCPUProfile(p.buf); err != nil {
		console("khib-profile: %s: %v", role, err)
		return helperProfile{}
	}
	return p
}

// stop ends the profile and prints it on the console; a second call does
// nothing.
func (p *helperProfile) stop() {
	if p.buf == nil {
		return
	}
	defer func() { p.buf = nil }()
	pprof.StopCPUProfile()
	s := base64.StdEncoding.EncodeToString(p.buf.Bytes())
	console("khib-profile: begin %s", p.role)
	for len(s) > 0 {
		n := min(len(s), 120)
		console("%s", s[:n])
		s = s[n:]
	}
	console("khib-profile: end %s", p.role)
}
