package main

// process.Process: children started with pipes or a PTY, their output fanned out to every stream
// attached to them (Start's, and Connect's by pid or tag), their stdin written by SendInput/StreamInput.

import (
	"context"
	"errors"
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

// run pumps the child's output to its streams, reaps it and sends the end event.
func (a *agent) run(p *process, outs []*os.File) {
	exitedFlag := make(chan struct{})
	var readers sync.WaitGroup
	for i, f := range outs {
		readers.Add(1)
		go func(i int, f *os.File) {
			defer readers.Done()
			buf := make([]byte, outChunk)
			for {
				select {
				case <-exitedFlag:
					// After the child exits, a grandchild may hold the pipe open: read what is
					// there, then stop once it stays quiet.
					_ = f.SetReadDeadline(time.Now().Add(drainAfterExit))
				default:
				}
				n, err := f.Read(buf)
				if n > 0 {
					d := &dataEvent{}
					b := Bytes(append([]byte(nil), buf[:n]...))
					switch {
					case p.pty != nil:
						d.Pty = b
					case i == 0:
						d.Stdout = b
					default:
						d.Stderr = b
					}
					p.broadcast(procEvent{Data: d}, false)
				}
				if err != nil {
					if errors.Is(err, os.ErrDeadlineExceeded) {
						select {
						case <-exitedFlag:
							return
						default:
							continue
						}
					}
					return // EOF, or EIO from a PTY master whose slave side is closed
				}
			}
		}(i, f)
	}
	err := p.cmd.Wait()
	close(exitedFlag)
	for _, f := range outs {
		_ = f.SetReadDeadline(time.Now().Add(drainAfterExit)) // wakes a reader blocked with no deadline
	}
	readers.Wait()
	st := p.cmd.ProcessState
	end := &endEvent{ExitCode: int32(st.ExitCode()), Exited: st.Exited(), Status: st.String()}
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			s := err.Error()
			end.Error = &s
		}
	}
	a.procs.mu.Lock()
	delete(a.procs.procs, p.pid)
	a.procs.mu.Unlock()
	p.broadcast(procEvent{End: end}, true)
	close(p.done)
	for _, f := range outs {
		f.Close()
	}
	p.inMu.Lock()
	if p.stdin != nil && !p.closed {
		p.stdin.Close()
		p.closed = true
	}
	p.inMu.Unlock()
}

func keepaliveInterval(h string) time.Duration {
	if h == "" {
		return 0
	}
	n := 0
	for _, c := range h {
		if c < '0' || c > '9' || n > maxKeepaliveSecs {
			return 0
		}
		n = n*10 + int(c-'0')
	}
	if n < 1 {
		n = 1
	}
	if n > maxKeepaliveSecs {
		n = maxKeepaliveSecs
	}
	return time.Duration(n) * time.Second
}

// follow streams a process's events to one client until its end event, the client leaving or the
// deadline.
func (a *agent) follow(c *call, p *process, s *subscriber, send func(interface{}) error) *rpcError {
	defer p.unsubscribe(s)
	if err := send(eventResponse{Event: procEvent{Start: &startEvent{Pid: p.pid}}}); err != nil {
		return errf(codeCanceled, "client gone")
	}
	var tick <-chan time.Time
	if d := keepaliveInterval(c.header.Get("Keepalive-Ping-Interval")); d > 0 {
		t := time.NewTicker(d)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case ev := <-s.ch:
			if err := send(eventResponse{Event: ev}); err != nil {
				return errf(codeCanceled, "client gone")
			}
			if ev.End != nil {
				return nil
			}
		case <-tick:
			if err := send(eventResponse{Event: procEvent{Keepalive: &struct{}{}}}); err != nil {
				return errf(codeCanceled, "client gone")
			}
		case <-s.gone:
			return errf(codeResourceExhausted, "the client did not read the process's output for %v", slowClient)
		case <-c.ctx.Done():
			return ctxError(c.ctx)
		}
	}
}

// signal sends sig to the process's group (its PTY session, or the group it leads), so that a shell's
// children go too.
func (p *process) signal(sig syscall.Signal) error {
	err := syscall.Kill(-int(p.pid), sig)
	if err == syscall.ESRCH {
		err = syscall.Kill(int(p.pid), sig)
	}
	return err
}

// writeInput writes to the PTY master or stdin pipe.
func (p *process) writeInput(ctx context.Context, data []byte, pty bool) *rpcError {
	p.inMu.Lock()
	defer p.inMu.Unlock()
	var f *os.File
	switch {
	case p.pty != nil:
		f = p.pty
	case pty:
		return errf(codeFailedPrecondition, "process %d has no PTY", p.pid)
	case p.closed || p.stdin == nil:
		return errf(codeFailedPrecondition, "process %d's stdin is closed (start it with stdin: true)", p.pid)
	default:
		f = p.stdin
	}
	dl := time.Now().Add(30 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = f.SetWriteDeadline(dl)
	if _, err := f.Write(data); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return errf(codeDeadlineExceeded, "process %d is not reading its input", p.pid)
		}
		return errf(codeFailedPrecondition, "writing to process %d: %v", p.pid, unwrapErr(err))
	}
	return nil
}

func unwrapErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.Err
	}
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err
	}
	return err
}
