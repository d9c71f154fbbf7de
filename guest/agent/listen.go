package main

// Listeners: AF_VSOCK (the guest side of a virtio-vsock device; Go's net package has no vsock), and
// TCP or a Unix socket (the same raw-socket code as vsock) for running the agent on a host in tests.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
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

// sockListener listens on a socket made with raw syscalls (AF_VSOCK, which Go's net package lacks,
// and AF_UNIX through the same code, so that host tests exercise it) and hands out *os.File-backed
// connections that wait in the runtime's poller.
type sockListener struct {
	f       *os.File
	addr    net.Addr
	family  int
	anyPeer bool // vsock: also serve peers other than the host (vsock loopback: processes in the guest)
}

type sockConn struct {
	*os.File
	local, remote net.Addr
}

// Read and Write report a passed deadline as a net.Error, as net.Conn's do: net/http takes only that
// for the deadline it sets itself to stop a background read (an *os.PathError would count as the
// client going away and cancel every later request on the connection).
func (c *sockConn) Read(p []byte) (int, error) {
	n, err := c.File.Read(p)
	return n, netErr(err)
}

func (c *sockConn) Write(p []byte) (int, error) {
	n, err := c.File.Write(p)
	return n, netErr(err)
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }
func (timeoutError) Is(e error) bool { return e == os.ErrDeadlineExceeded }

func netErr(err error) error {
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return timeoutError{}
	}
	return err
}

func (c *sockConn) LocalAddr() net.Addr  { return c.local }
func (c *sockConn) RemoteAddr() net.Addr { return c.remote }

// rawListen makes a non-blocking socket of family, binds it to the sockaddr at sa (len bytes) and
// listens.
func rawListen(family int, sa unsafe.Pointer, salen uintptr, what string) (*os.File, error) {
	fd, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, uintptr(family), syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
	if e != 0 {
		return nil, fmt.Errorf("%s: socket: %w", what, e)
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_BIND, fd, uintptr(sa), salen); e != 0 {
		syscall.Close(int(fd))
		return nil, fmt.Errorf("%s: bind: %w", what, e)
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_LISTEN, fd, 128, 0); e != 0 {
		syscall.Close(int(fd))
		return nil, fmt.Errorf("%s: listen: %w", what, e)
	}
	return os.NewFile(fd, what), nil
}

func listenVsock(port uint32, anyPeer bool) (net.Listener, error) {
	sa := sockaddrVm{Family: afVsock, Port: port, Cid: vmaddrAny}
	f, err := rawListen(afVsock, unsafe.Pointer(&sa), sockaddrVM, fmt.Sprintf("vsock port %d", port))
	if err != nil {
		return nil, err
	}
	return &sockListener{f: f, addr: vsockAddr{vmaddrAny, port}, family: afVsock, anyPeer: anyPeer}, nil
}

func listenUnix(path string) (net.Listener, error) {
	var sa syscall.RawSockaddrUnix
	if len(path) == 0 || len(path) >= len(sa.Path) {
		return nil, fmt.Errorf("unix socket path %q: want 1 to %d bytes", path, len(sa.Path)-1)
	}
	sa.Family = syscall.AF_UNIX
	for i := 0; i < len(path); i++ {
		sa.Path[i] = int8(path[i])
	}
	_ = os.Remove(path)
	f, err := rawListen(syscall.AF_UNIX, unsafe.Pointer(&sa), uintptr(2+len(path)+1), "unix socket "+path)
	if err != nil {
		return nil, err
	}
	return &sockListener{f: f, addr: &net.UnixAddr{Name: path, Net: "unix"}, family: syscall.AF_UNIX}, nil
}

// Accept waits in the runtime's poller (the socket is non-blocking) rather than blocking a thread.
// On vsock only the host is served: a guest process reaching the agent through vsock loopback would
// otherwise run commands as root before /init has set a token.
func (l *sockListener) Accept() (net.Conn, error) {
	for {
		c, err := l.accept()
		if err != nil {
			return nil, err
		}
		if v, ok := c.remote.(vsockAddr); !ok || l.anyPeer || v.cid == vmaddrHost {
			return c, nil
		}
		log.Printf("refused a vsock connection from cid %d (only the host, cid %d, is served)", c.remote.(vsockAddr).cid, vmaddrHost)
		c.Close()
	}
}

func (l *sockListener) accept() (*sockConn, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd uintptr
	var peer [128]byte // room for any sockaddr
	var aerr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			n := uint32(len(peer))
			r, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, fd, uintptr(unsafe.Pointer(&peer[0])), uintptr(unsafe.Pointer(&n)),
				syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0, 0)
			switch e {
			case syscall.EINTR:
				continue // the runtime's preemption signal landed in the call
			case syscall.EAGAIN:
				return false
			case 0:
				nfd = r
			default:
				aerr = e
			}
			return true
		}
	})
	if err != nil {
		return nil, err
	}
	if aerr != nil {
		if aerr == syscall.ECONNABORTED {
			return nil, &tempErr{aerr}
		}
		return nil, aerr
	}
	var remote net.Addr = &net.UnixAddr{Name: "@", Net: "unix"}
	if l.family == afVsock {
		remote = vsockAddr{cid: binary.LittleEndian.Uint32(peer[8:]), port: binary.LittleEndian.Uint32(peer[4:])}
	}
	return &sockConn{File: os.NewFile(nfd, "conn"), local: l.addr, remote: remote}, nil
}

type tempErr struct{ error }

func (t *tempErr) Temporary() bool { return true }
func (t *tempErr) Timeout() bool   { return false }

func (l *sockListener) Close() error   { return l.f.Close() }
func (l *sockListener) Addr() net.Addr { return l.addr }

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
		return listenUnix(rest)
	}
	return nil, fmt.Errorf("listen: unknown kind %q", kind)
}

// maxConns bounds the connections served at once; one over it is closed as soon as it is accepted.
const maxConns = 512

type limitListener struct {
	net.Listener
	sem chan struct{}
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

func limit(l net.Listener) net.Listener {
	return &limitListener{Listener: l, sem: make(chan struct{}, maxConns)}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
		default:
			log.Printf("refused a connection: %d are open", maxConns)
			c.Close()
		}
	}
}
