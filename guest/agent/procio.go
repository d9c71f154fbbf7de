package main

// A process's I/O once it runs: its output pumped to the streams attached to it, the end event, the
// streams' keepalives, signals and input.

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// run pumps the child's output to its streams, reaps it and sends the end event.
func (a *agent) run(p *process, outs []*os.File) {
	exitedFlag := make(chan struct{})
	var readers sync.WaitGroup
	for i, f := range outs {
		readers.Add(1)
		go func(i int, f *os.File) {
			defer readers.Done()
			buf := make([]byte, outChunk)
			var hard time.Time // the latest a reader drains after the exit
			draining := false  // this read has the drain deadline (not one set before the exit)
			for {
				select {
				case <-exitedFlag:
					// After the child exits, a grandchild may hold the pipe open: read what is
					// there, then stop once it stays quiet, or at the latest drainMax after the exit.
					if hard.IsZero() {
						hard = time.Now().Add(drainMax)
					}
					d := time.Now().Add(drainAfterExit)
					if d.After(hard) {
						d = hard
					}
					_ = f.SetReadDeadline(d)
					draining = true
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
						if draining {
							return // quiet for drainAfterExit, or drainMax reached
						}
						continue // the deadline run() set to wake a read begun before the exit
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
