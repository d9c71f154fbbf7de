package main

// process.Process: children started with pipes or a PTY, their output fanned out to every stream
// attached to them (Start's, and Connect's by pid or tag), their stdin written by SendInput/StreamInput.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	maxProcesses     = 1024
	maxSubscribers   = 32
	maxEnvs          = 4096
	maxArgBytes      = 1 << 20
	maxTagLen        = 256
	outChunk         = 32 << 10
	subQueue         = 128 // chunks queued per stream: at most 4 MiB of output waits for one client
	slowClient       = 30 * time.Second
	drainAfterExit   = 200 * time.Millisecond
	drainMax         = 2 * time.Second
	defaultPath      = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	maxKeepaliveSecs = 3600
)

type procEvent struct {
	Start     *startEvent `json:"start,omitempty"`
	Data      *dataEvent  `json:"data,omitempty"`
	End       *endEvent   `json:"end,omitempty"`
	Keepalive *struct{}   `json:"keepalive,omitempty"`
}
type startEvent struct {
	Pid uint32 `json:"pid"`
}
type dataEvent struct {
	Stdout Bytes `json:"stdout,omitempty"`
	Stderr Bytes `json:"stderr,omitempty"`
	Pty    Bytes `json:"pty,omitempty"`
}
type endEvent struct {
	ExitCode int32   `json:"exitCode"`
	Exited   bool    `json:"exited"`
	Status   string  `json:"status"`
	Error    *string `json:"error,omitempty"`
}
type eventResponse struct {
	Event procEvent `json:"event"`
}

type processConfig struct {
	Cmd  string            `json:"cmd"`
	Args []string          `json:"args"`
	Envs map[string]string `json:"envs"`
	Cwd  *string           `json:"cwd,omitempty"`
}

type ptySize struct {
	Cols U32 `json:"cols"`
	Rows U32 `json:"rows"`
}
type ptyReq struct {
	Size *ptySize `json:"size"`
}

type selector struct {
	Pid *U32    `json:"pid"`
	Tag *string `json:"tag"`
}

type subscriber struct {
	ch   chan procEvent
	gone chan struct{} // closed when the stream stops reading
	once sync.Once
}

func (s *subscriber) leave() { s.once.Do(func() { close(s.gone) }) }

type process struct {
	pid    uint32
	tag    *string
	config processConfig
	cmd    *exec.Cmd
	pty    *os.File // the PTY master, or nil
	stdin  *os.File // the write end of stdin's pipe, or nil

	done   chan struct{} // closed once the process has exited and its end event went out
	mu     sync.Mutex
	subs   map[*subscriber]struct{}
	ended  bool
	inMu   sync.Mutex // orders writes to stdin
	closed bool       // stdin closed
}

type processTable struct {
	mu    sync.Mutex
	procs map[uint32]*process
}

func (t *processTable) find(sel *selector) (*process, *rpcError) {
	if sel == nil || (sel.Pid == nil && sel.Tag == nil) {
		return nil, errf(codeInvalidArgument, "no process selector (pid or tag)")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if sel.Pid != nil {
		if p := t.procs[uint32(*sel.Pid)]; p != nil {
			return p, nil
		}
		return nil, errf(codeNotFound, "no process with pid %d", uint32(*sel.Pid))
	}
	for _, p := range t.procs {
		if p.tag != nil && *p.tag == *sel.Tag {
			return p, nil
		}
	}
	return nil, errf(codeNotFound, "no process with tag %.60q", *sel.Tag)
}

// subscribe attaches a stream; it fails once the process has ended (its end event was sent).
func (p *process) subscribe() (*subscriber, *rpcError) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended {
		return nil, errf(codeNotFound, "process %d has ended", p.pid)
	}
	if len(p.subs) >= maxSubscribers {
		return nil, errf(codeResourceExhausted, "process %d already has %d streams", p.pid, maxSubscribers)
	}
	s := &subscriber{ch: make(chan procEvent, subQueue), gone: make(chan struct{})}
	p.subs[s] = struct{}{}
	return s, nil
}

func (p *process) unsubscribe(s *subscriber) {
	s.leave()
	p.mu.Lock()
	delete(p.subs, s)
	p.mu.Unlock()
}

// broadcast hands ev to every attached stream, waiting for slow ones (that is the back-pressure on the
// child's output) but dropping one that has not taken an event for slowClient.
func (p *process) broadcast(ev procEvent, last bool) {
	p.mu.Lock()
	if last {
		p.ended = true
	}
	subs := make([]*subscriber, 0, len(p.subs))
	for s := range p.subs {
		subs = append(subs, s)
	}
	p.mu.Unlock()
	for _, s := range subs {
		select {
		case s.ch <- ev:
		case <-s.gone:
		default:
			t := time.NewTimer(slowClient)
			select {
			case s.ch <- ev:
			case <-s.gone:
			case <-t.C:
				p.unsubscribe(s)
			}
			t.Stop()
		}
	}
}

func validEnvName(k string) bool {
	return k != "" && len(k) <= 1024 && !strings.ContainsAny(k, "=\x00")
}

// lookPath finds cmd in the child's PATH (exec.LookPath would use the agent's).
func lookPath(cmd, path string) (string, *rpcError) {
	if strings.Contains(cmd, "/") {
		return cmd, nil
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		f := filepath.Join(dir, cmd)
		if st, err := os.Stat(f); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return f, nil
		}
	}
	return "", errf(codeNotFound, "executable %.100q not found in PATH", cmd)
}

func (a *agent) childEnv(acct *account, extra map[string]string) ([]string, string, *rpcError) {
	env := map[string]string{
		"PATH": defaultPath, "HOME": acct.home, "USER": acct.name, "LOGNAME": acct.name,
	}
	if acct.shell != "" {
		env["SHELL"] = acct.shell
	}
	a.mu.Lock()
	for k, v := range a.envs {
		env[k] = v
	}
	a.mu.Unlock()
	if len(extra) > maxEnvs {
		return nil, "", errf(codeInvalidArgument, "over %d environment variables", maxEnvs)
	}
	for k, v := range extra {
		if !validEnvName(k) || strings.IndexByte(v, 0) >= 0 {
			return nil, "", errf(codeInvalidArgument, "bad environment variable %.60q", k)
		}
		env[k] = v
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out, env["PATH"], nil
}

type startRequest struct {
	Process *processConfig `json:"process"`
	Pty     *ptyReq        `json:"pty"`
	Tag     *string        `json:"tag"`
	Stdin   *bool          `json:"stdin"`
}

// start launches a child and returns it with the caller's stream already attached.
func (a *agent) start(c *call, req *startRequest) (*process, *subscriber, *rpcError) {
	cfg := req.Process
	if cfg == nil || cfg.Cmd == "" {
		return nil, nil, errf(codeInvalidArgument, "no command")
	}
	n := len(cfg.Cmd)
	for _, s := range append([]string{cfg.Cmd}, cfg.Args...) {
		if strings.IndexByte(s, 0) >= 0 {
			return nil, nil, errf(codeInvalidArgument, "a NUL byte in the command or its arguments")
		}
		n += len(s)
	}
	if n > maxArgBytes {
		return nil, nil, errf(codeInvalidArgument, "command and arguments are over %d bytes", maxArgBytes)
	}
	if req.Tag != nil && len(*req.Tag) > maxTagLen {
		return nil, nil, errf(codeInvalidArgument, "tag is over %d bytes", maxTagLen)
	}
	acct := c.user
	env, pathEnv, rerr := a.childEnv(acct, cfg.Envs)
	if rerr != nil {
		return nil, nil, rerr
	}
	cwd := ""
	if cfg.Cwd != nil && *cfg.Cwd != "" {
		cwd = *cfg.Cwd
	} else {
		a.mu.Lock()
		cwd = a.defaultWorkdir
		a.mu.Unlock()
		if cwd == "" {
			cwd = acct.home
		}
	}
	cwd, rerr = resolvePath(cwd, acct)
	if rerr != nil {
		return nil, nil, rerr
	}
	if err := a.asUser(acct, func() error {
		st, err := os.Stat(cwd)
		if err == nil && !st.IsDir() {
			return syscall.ENOTDIR
		}
		return err
	}); err != nil {
		return nil, nil, errf(codeInvalidArgument, "working directory %q: %v", cwd, unwrapErr(err))
	}
	var exe string
	var err error
	if err = a.asUser(acct, func() error {
		var e *rpcError
		exe, e = lookPath(cfg.Cmd, pathEnv)
		if e != nil {
			return e
		}
		return nil
	}); err != nil {
		if e, ok := err.(*rpcError); ok {
			return nil, nil, e
		}
		return nil, nil, errf(codeInternal, "%v", err)
	}

	a.procs.mu.Lock()
	count := len(a.procs.procs)
	a.procs.mu.Unlock()
	if count >= maxProcesses {
		return nil, nil, errf(codeResourceExhausted, "%d processes are running", count)
	}

	cmd := &exec.Cmd{Path: exe, Args: append([]string{cfg.Cmd}, cfg.Args...), Env: env, Dir: cwd}
	attr := &syscall.SysProcAttr{Credential: a.credential(acct)}
	cmd.SysProcAttr = attr
	p := &process{config: *cfg, tag: req.Tag, cmd: cmd, subs: map[*subscriber]struct{}{}, done: make(chan struct{})}
	if p.config.Args == nil {
		p.config.Args = []string{}
	}
	if p.config.Envs == nil {
		p.config.Envs = map[string]string{}
	}
	var outs []*os.File   // read ends the agent reads
	var childs []*os.File // ends the child gets, closed here once it started
	closeAll := func() {
		for _, f := range append(outs, childs...) {
			f.Close()
		}
		if p.stdin != nil {
			p.stdin.Close()
		}
	}
	if req.Pty != nil {
		cols, rows := uint16(80), uint16(24)
		if req.Pty.Size != nil {
			if req.Pty.Size.Cols > 0 {
				cols = clampU16(req.Pty.Size.Cols)
			}
			if req.Pty.Size.Rows > 0 {
				rows = clampU16(req.Pty.Size.Rows)
			}
		}
		master, slave, perr := openPTY(cols, rows)
		if perr != nil {
			return nil, nil, errf(codeInternal, "opening a PTY: %v", perr)
		}
		if acct.uid != a.self.uid && a.self.uid == 0 {
			_ = slave.Chown(int(acct.uid), int(acct.gid))
		}
		p.pty = master
		outs = append(outs, master)
		childs = append(childs, slave)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		attr.Setsid, attr.Setctty, attr.Ctty = true, true, 0
	} else {
		attr.Setpgid = true
		or, ow, e1 := os.Pipe()
		if e1 != nil {
			return nil, nil, errf(codeResourceExhausted, "pipe: %v", e1)
		}
		outs, childs = append(outs, or), append(childs, ow)
		er, ew, e2 := os.Pipe()
		if e2 != nil {
			closeAll()
			return nil, nil, errf(codeResourceExhausted, "pipe: %v", e2)
		}
		outs, childs = append(outs, er), append(childs, ew)
		cmd.Stdout, cmd.Stderr = ow, ew
		if req.Stdin == nil || *req.Stdin {
			ir, iw, e3 := os.Pipe()
			if e3 != nil {
				closeAll()
				return nil, nil, errf(codeResourceExhausted, "pipe: %v", e3)
			}
			childs = append(childs, ir)
			p.stdin = iw
			cmd.Stdin = ir
		} else {
			p.closed = true // stdin is /dev/null (exec.Cmd's default for a nil Stdin)
		}
	}
	sub, _ := p.subscribe()
	if err := cmd.Start(); err != nil {
		closeAll()
		return nil, nil, errf(codeInvalidArgument, "starting %q: %v", cfg.Cmd, unwrapErr(err))
	}
	for _, f := range childs {
		f.Close()
	}
	p.pid = uint32(cmd.Process.Pid)
	a.procs.mu.Lock()
	a.procs.procs[p.pid] = p
	a.procs.mu.Unlock()
	go a.run(p, outs)
	return p, sub, nil
}

func clampU16(v U32) uint16 {
	if v > 65535 {
		return 65535
	}
	return uint16(v)
}
