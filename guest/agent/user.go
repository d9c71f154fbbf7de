package main

// Accounts: who a request runs as. The SDK names a user in `Authorization: Basic base64(user:)` (RPCs)
// or `?username=` (/files); without one the default user from /init applies, else the agent's own.
// Processes get the account through setuid/setgid/setgroups (syscall.Credential); file operations run
// on a locked OS thread whose fsuid/fsgid/groups are the account's, so the kernel applies that user's
// permissions and new files belong to them.

import (
	"bufio"
	"encoding/base64"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type account struct {
	name   string
	uid    uint32
	gid    uint32
	groups []uint32
	home   string
	shell  string
}

const maxDBFile = 4 << 20

// readDB reads a colon-separated database (/etc/passwd, /etc/group) into its records.
func readDB(path string) [][]string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(&limitedReader{f, maxDBFile})
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		out = append(out, strings.Split(line, ":"))
	}
	return out
}

type limitedReader struct {
	f *os.File
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, os.ErrClosed
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.f.Read(p)
	l.n -= int64(n)
	return n, err
}

// userDB caches /etc/passwd and /etc/group for a couple of seconds (ListDir names every entry's owner).
type userDB struct {
	mu      sync.Mutex
	at      time.Time
	byName  map[string]*account
	uidName map[uint32]string
	gidName map[uint32]string
}

var users userDB

func (d *userDB) load() {
	if time.Since(d.at) < 2*time.Second && d.byName != nil {
		return
	}
	d.byName = map[string]*account{}
	d.uidName = map[uint32]string{}
	d.gidName = map[uint32]string{}
	for _, r := range readDB("/etc/passwd") {
		if len(r) < 7 {
			continue
		}
		uid, e1 := strconv.ParseUint(r[2], 10, 32)
		gid, e2 := strconv.ParseUint(r[3], 10, 32)
		if e1 != nil || e2 != nil || r[0] == "" {
			continue
		}
		if _, dup := d.byName[r[0]]; dup {
			continue
		}
		d.byName[r[0]] = &account{name: r[0], uid: uint32(uid), gid: uint32(gid), home: r[5], shell: r[6]}
		if _, ok := d.uidName[uint32(uid)]; !ok {
			d.uidName[uint32(uid)] = r[0]
		}
	}
	for _, r := range readDB("/etc/group") {
		if len(r) < 4 {
			continue
		}
		gid, err := strconv.ParseUint(r[2], 10, 32)
		if err != nil {
			continue
		}
		if _, ok := d.gidName[uint32(gid)]; !ok {
			d.gidName[uint32(gid)] = r[0]
		}
		for _, m := range strings.Split(r[3], ",") {
			if a := d.byName[m]; a != nil && uint32(gid) != a.gid {
				a.groups = append(a.groups, uint32(gid))
			}
		}
	}
	d.at = time.Now()
}

func lookupAccount(name string) *account {
	users.mu.Lock()
	defer users.mu.Unlock()
	users.load()
	a := users.byName[name]
	if a == nil {
		return nil
	}
	c := *a
	c.groups = append([]uint32{c.gid}, a.groups...)
	if c.home == "" {
		c.home = "/"
	}
	return &c
}

func ownerNames(uid, gid uint32) (string, string) {
	users.mu.Lock()
	defer users.mu.Unlock()
	users.load()
	u, ok := users.uidName[uid]
	if !ok {
		u = strconv.FormatUint(uint64(uid), 10)
	}
	g, ok := users.gidName[gid]
	if !ok {
		g = strconv.FormatUint(uint64(gid), 10)
	}
	return u, g
}

// selfAccount is the account the agent runs as.
func selfAccount() *account {
	uid := uint32(os.Geteuid())
	users.mu.Lock()
	users.load()
	name, ok := users.uidName[uid]
	users.mu.Unlock()
	if ok {
		if a := lookupAccount(name); a != nil {
			return a
		}
	}
	home := os.Getenv("HOME")
	if home == "" {
		home = "/"
	}
	return &account{name: strconv.FormatUint(uint64(uid), 10), uid: uid, gid: uint32(os.Getegid()), groups: []uint32{uint32(os.Getegid())}, home: home, shell: "/bin/sh"}
}

func validUserName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '$') {
			return false
		}
	}
	return true
}

// requestUser resolves the account a request names (Authorization: Basic, or a /files username).
func (a *agent) requestUser(authz, name string) (*account, *rpcError) {
	if name == "" && authz != "" {
		const p = "Basic "
		if len(authz) > len(p) && strings.EqualFold(authz[:len(p)], p) {
			raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(authz[len(p):]))
			if err != nil {
				return nil, errf(codeInvalidArgument, "Authorization is not base64")
			}
			name = string(raw)
			if i := strings.IndexByte(name, ':'); i >= 0 {
				name = name[:i]
			}
		}
	}
	if name == "" {
		a.mu.Lock()
		name = a.defaultUser
		a.mu.Unlock()
	}
	if name == "" {
		return a.self, nil
	}
	if !validUserName(name) {
		return nil, errf(codeInvalidArgument, "bad user name %.70q", name)
	}
	acct := lookupAccount(name)
	if acct == nil {
		return nil, errf(codePermissionDenied, "no user %q", name)
	}
	if acct.uid != a.self.uid && a.self.uid != 0 {
		return nil, errf(codePermissionDenied, "the agent runs as %s and cannot act as %s", a.self.name, name)
	}
	return acct, nil
}

// credential is what a child process started for acct needs (nil: run as the agent).
func (a *agent) credential(acct *account) *syscall.Credential {
	if acct.uid == a.self.uid || a.self.uid != 0 {
		return nil
	}
	return &syscall.Credential{Uid: acct.uid, Gid: acct.gid, Groups: acct.groups}
}

var rootGroups []uint32

// asUser runs fn with the calling thread's file-system identity set to acct. The raw syscalls change
// only this thread (glibc and Go's syscall.Setgroups would change every thread).
func (a *agent) asUser(acct *account, fn func() error) error {
	if a.self.uid != 0 || acct.uid == 0 {
		return fn()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var gp *uint32
	if len(acct.groups) > 0 {
		gp = &acct.groups[0]
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETGROUPS, uintptr(len(acct.groups)), uintptr(unsafePtr(gp)), 0); e != 0 {
		return e
	}
	syscall.RawSyscall(syscall.SYS_SETFSGID, uintptr(acct.gid), 0, 0)
	syscall.RawSyscall(syscall.SYS_SETFSUID, uintptr(acct.uid), 0, 0)
	defer func() {
		syscall.RawSyscall(syscall.SYS_SETFSUID, 0, 0, 0)
		syscall.RawSyscall(syscall.SYS_SETFSGID, 0, 0, 0)
		var rp *uint32
		if len(rootGroups) > 0 {
			rp = &rootGroups[0]
		}
		syscall.RawSyscall(syscall.SYS_SETGROUPS, uintptr(len(rootGroups)), uintptr(unsafePtr(rp)), 0)
	}()
	return fn()
}
