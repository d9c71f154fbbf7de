package main

// PTYs through /dev/ptmx and the TIOC* ioctls (what posix_openpt/grantpt/unlockpt/ptsname do).

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

type winsize struct {
	Rows, Cols, X, Y uint16
}

func ioctl(fd uintptr, req uintptr, arg uintptr) error {
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, req, arg); e != 0 {
		return e
	}
	return nil
}

func openPTY(cols, rows uint16) (*os.File, *os.File, error) {
	mfd, err := syscall.Open("/dev/ptmx", syscall.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	var unlock int32
	if err := ioctl(uintptr(mfd), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); err != nil {
		syscall.Close(mfd)
		return nil, nil, err
	}
	var n uint32
	if err := ioctl(uintptr(mfd), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); err != nil {
		syscall.Close(mfd)
		return nil, nil, err
	}
	master := os.NewFile(uintptr(mfd), "ptmx") // non-blocking, so it uses the poller and takes deadlines
	if err := setWinsize(master, cols, rows); err != nil {
		master.Close()
		return nil, nil, err
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	return master, slave, nil
}

func setWinsize(f *os.File, cols, rows uint16) error {
	ws := winsize{Rows: rows, Cols: cols}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = ioctl(fd, syscall.TIOCSWINSZ, uintptr(unsafe.Pointer(&ws)))
	}); err != nil {
		return err
	}
	return ierr
}
