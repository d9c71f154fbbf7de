package main

// The process.Process service's methods.

import (
	"syscall"
	"time"
)

type processInput struct {
	Stdin Bytes `json:"stdin"`
	Pty   Bytes `json:"pty"`
}

func (in *processInput) data() ([]byte, bool, *rpcError) {
	if in == nil {
		return nil, false, errf(codeInvalidArgument, "no input")
	}
	if in.Pty != nil {
		return in.Pty, true, nil
	}
	return in.Stdin, false, nil
}

type processInfo struct {
	Config processConfig `json:"config"`
	Pid    uint32        `json:"pid"`
	Tag    *string       `json:"tag,omitempty"`
}

type empty struct{}

func (a *agent) processMethods() map[string]*method {
	return map[string]*method{
		"/process.Process/Start": {stream: func(c *call, body []byte, send func(interface{}) error) *rpcError {
			var req startRequest
			if e := decodeJSON(body, &req); e != nil {
				return e
			}
			p, sub, e := a.start(c, &req)
			if e != nil {
				return e
			}
			// The call's deadline (the SDK's timeoutMs) is the command's lifetime: it is killed then
			// even if the client gave up a moment earlier, or disconnected to reconnect later.
			if d, ok := c.ctx.Deadline(); ok {
				t := time.AfterFunc(time.Until(d), func() { _ = p.signal(syscall.SIGKILL) })
				go func() { <-p.done; t.Stop() }()
			}
			return a.follow(c, p, sub, send)
		}},
		"/process.Process/Connect": {stream: func(c *call, body []byte, send func(interface{}) error) *rpcError {
			var req struct {
				Process *selector `json:"process"`
			}
			if e := decodeJSON(body, &req); e != nil {
				return e
			}
			p, e := a.procs.find(req.Process)
			if e != nil {
				return e
			}
			sub, e := p.subscribe()
			if e != nil {
				return e
			}
			return a.follow(c, p, sub, send)
		}},
		"/process.Process/List": {unary: func(c *call, body []byte) (interface{}, *rpcError) {
			if e := decodeJSON(body, &empty{}); e != nil {
				return nil, e
			}
			a.procs.mu.Lock()
			defer a.procs.mu.Unlock()
			out := make([]processInfo, 0, len(a.procs.procs))
			for _, p := range a.procs.procs {
				out = append(out, processInfo{Config: p.config, Pid: p.pid, Tag: p.tag})
			}
			return struct {
				Processes []processInfo `json:"processes"`
			}{out}, nil
		}},
		"/process.Process/SendInput": {unary: func(c *call, body []byte) (interface{}, *rpcError) {
			var req struct {
				Process *selector     `json:"process"`
				Input   *processInput `json:"input"`
			}
			if e := decodeJSON(body, &req); e != nil {
				return nil, e
			}
			data, pty, e := req.Input.data()
			if e != nil {
				return nil, e
			}
			p, e := a.procs.find(req.Process)
			if e != nil {
				return nil, e
			}
			if e := p.writeInput(c.ctx, data, pty); e != nil {
				return nil, e
			}
			return empty{}, nil
		}},
		"/process.Process/StreamInput": {client: func(c *call, next func() ([]byte, *rpcError)) (interface{}, *rpcError) {
			var p *process
			for {
				body, e := next()
				if e != nil {
					return nil, e
				}
				if body == nil {
					return empty{}, nil
				}
				var msg struct {
					Start *struct {
						Process *selector `json:"process"`
					} `json:"start"`
					Data *struct {
						Input *processInput `json:"input"`
					} `json:"data"`
					Keepalive *struct{} `json:"keepalive"`
				}
				if e := decodeJSON(body, &msg); e != nil {
					return nil, e
				}
				switch {
				case msg.Start != nil:
					if p != nil {
						return nil, errf(codeInvalidArgument, "a second start message")
					}
					if p, e = a.procs.find(msg.Start.Process); e != nil {
						return nil, e
					}
				case msg.Data != nil:
					if p == nil {
						return nil, errf(codeInvalidArgument, "data before the start message")
					}
					data, pty, e := msg.Data.Input.data()
					if e != nil {
						return nil, e
					}
					if e := p.writeInput(c.ctx, data, pty); e != nil {
						return nil, e
					}
				case msg.Keepalive != nil:
				default:
					return nil, errf(codeInvalidArgument, "an empty stream message")
				}
			}
		}},
		"/process.Process/CloseStdin": {unary: func(c *call, body []byte) (interface{}, *rpcError) {
			var req struct {
				Process *selector `json:"process"`
			}
			if e := decodeJSON(body, &req); e != nil {
				return nil, e
			}
			p, e := a.procs.find(req.Process)
			if e != nil {
				return nil, e
			}
			if p.pty != nil {
				return nil, errf(codeFailedPrecondition, "process %d has a PTY: send Ctrl-D (0x04) instead", p.pid)
			}
			p.inMu.Lock()
			if p.stdin != nil && !p.closed {
				p.stdin.Close()
			}
			p.closed = true
			p.inMu.Unlock()
			return empty{}, nil
		}},
		"/process.Process/SendSignal": {unary: func(c *call, body []byte) (interface{}, *rpcError) {
			var req struct {
				Process *selector `json:"process"`
				Signal  Signal    `json:"signal"`
			}
			if e := decodeJSON(body, &req); e != nil {
				return nil, e
			}
			var sig syscall.Signal
			switch req.Signal {
			case 9:
				sig = syscall.SIGKILL
			case 15:
				sig = syscall.SIGTERM
			default:
				return nil, errf(codeInvalidArgument, "unsupported signal %d (SIGTERM and SIGKILL are)", req.Signal)
			}
			p, e := a.procs.find(req.Process)
			if e != nil {
				return nil, e
			}
			if err := p.signal(sig); err != nil && err != syscall.ESRCH {
				return nil, errf(codeInternal, "signal: %v", err)
			}
			return empty{}, nil
		}},
		"/process.Process/Update": {unary: func(c *call, body []byte) (interface{}, *rpcError) {
			var req struct {
				Process *selector `json:"process"`
				Pty     *ptyReq   `json:"pty"`
			}
			if e := decodeJSON(body, &req); e != nil {
				return nil, e
			}
			p, e := a.procs.find(req.Process)
			if e != nil {
				return nil, e
			}
			if req.Pty == nil || req.Pty.Size == nil {
				return empty{}, nil
			}
			if p.pty == nil {
				return nil, errf(codeFailedPrecondition, "process %d has no PTY", p.pid)
			}
			s := req.Pty.Size
			if s.Cols == 0 || s.Rows == 0 || s.Cols > 65535 || s.Rows > 65535 {
				return nil, errf(codeInvalidArgument, "bad PTY size %dx%d", s.Cols, s.Rows)
			}
			if err := setWinsize(p.pty, uint16(s.Cols), uint16(s.Rows)); err != nil {
				return nil, errf(codeFailedPrecondition, "resizing the PTY: %v", err)
			}
			return empty{}, nil
		}},
	}
}
