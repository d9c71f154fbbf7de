package main

// Listeners: AF_VSOCK (the guest side of a virtio-vsock device; Go's net package has no vsock), and
// TCP or a Unix socket for running the agent on a host in tests.

import (
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

const (
	afVsock    = 40
	vmaddrAny  = 0xffffffff
	vmaddrHost = 2 // the host's CID: the only peer a guest agent serves
	sockaddrVM = 16
)

// sockaddrVm is struct sockaddr_vm: family, reserved, port, cid, flags, zero[3].
type sockaddrVm struct {
	Family    uint16
	Reserved1 uint16
	Port      uint32
	Cid       uint32
	Flags     uint8
	Zero      [3]uint8
}

type vsockAddr struct{ cid, port uint32 }

func (v vsockAddr) Network() string { return "vsock" }
func (v vsockAddr) String() string  { return fmt.Sprintf("vsock:%d:%d", v.cid, v.port) }

type vsockListener struct {
	f       *os.File
	addr    vsockAddr
	anyPeer bool // also serve peers other than the host (vsock loopback: processes in the guest)
}

type vsockConn struct {
	*os.File
	local, remote vsockAddr
}

func (c *vsockConn) LocalAddr() net.Addr  { return c.local }
func (c *vsockConn) RemoteAddr() net.Addr { return c.remote }
func (c *vsockConn) SetDeadline(t time.Time) error {
	return c.File.SetDeadline(t)
}

func listenVsock(port uint32, anyPeer bool) (net.Listener, error) {
	fd, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, afVsock, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
	if e != 0 {
		return nil, fmt.Errorf("vsock socket: %w", e)
	}
	sa := sockaddrVm{Family: afVsock, Port: port, Cid: vmaddrAny}
	if _, _, e := syscall.RawSyscall(syscall.SYS_BIND, fd, uintptr(unsafe.Pointer(&sa)), sockaddrVM); e != 0 {
		syscall.Close(int(fd))
		return nil, fmt.Errorf("vsock bind port %d: %w", port, e)
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_LISTEN, fd, 128, 0); e != 0 {
		syscall.Close(int(fd))
		return nil, fmt.Errorf("vsock listen: %w", e)
	}
	return &vsockListener{f: os.NewFile(fd, "vsock-listener"), addr: vsockAddr{vmaddrAny, port}, anyPeer: anyPeer}, nil
}

// Accept waits in the runtime's poller (the socket is non-blocking) rather than blocking a thread.
// Only the host is served: a guest process reaching the agent through vsock loopback would otherwise
// run commands as root before /init has set a token.
func (l *vsockListener) Accept() (net.Conn, error) {
	for {
		c, err := l.accept()
		if err != nil {
			return nil, err
		}
		if l.anyPeer || c.remote.cid == vmaddrHost {
			return c, nil
		}
		log.Printf("refused a vsock connection from cid %d (only the host, cid %d, is served)", c.remote.cid, vmaddrHost)
		c.Close()
	}
}

func (l *vsockListener) accept() (*vsockConn, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd uintptr
	var peer sockaddrVm
	var aerr error
	err = rc.Read(func(fd uintptr) bool {
		n := uint32(sockaddrVM)
		r, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, fd, uintptr(unsafe.Pointer(&peer)), uintptr(unsafe.Pointer(&n)),
			syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0, 0)
		if e == syscall.EAGAIN {
			return false
		}
		if e != 0 {
			aerr = e
		}
		nfd = r
		return true
	})
	if err != nil {
		return nil, err
	}
	if aerr != nil {
		if aerr == syscall.ECONNABORTED || aerr == syscall.EINTR {
			return nil, &tempErr{aerr}
		}
		return nil, aerr
	}
	return &vsockConn{File: os.NewFile(nfd, "vsock"), local: l.addr, remote: vsockAddr{peer.Cid, peer.Port}}, nil
}

type tempErr struct{ error }

func (t *tempErr) Temporary() bool { return true }
func (t *tempErr) Timeout() bool   { return false }

func (l *vsockListener) Close() error   { return l.f.Close() }
func (l *vsockListener) Addr() net.Addr { return l.addr }

// listen opens one listener from a spec: vsock:PORT, tcp:HOST:PORT or unix:PATH.
func listen(spec string, anyPeer bool) (net.Listener, error) {
	kind, rest, ok := strings.Cut(spec, ":")
	if !ok {
		return nil, errors.New("listen: want vsock:PORT, tcp:HOST:PORT or unix:PATH")
	}
	switch kind {
	case "vsock":
		port, err := strconv.ParseUint(rest, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("listen: bad vsock port %q", rest)
		}
		return listenVsock(uint32(port), anyPeer)
	case "tcp":
		return net.Listen("tcp", rest)
	case "unix":
		_ = os.Remove(rest)
		return net.Listen("unix", rest)
	}
	return nil, fmt.Errorf("listen: unknown kind %q", kind)
}
