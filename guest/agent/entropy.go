package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

// A clone restored from a template starts with its template's CRNG state: every clone would draw the
// same "random" bytes until the kernel reseeds by itself. /init's vireoEntropy (vireo's own field;
// E2B never sends it) carries host bytes that go into the input pool as credited entropy
// (RNDADDENTROPY) and make the kernel reseed its CRNG from it at once (RNDRESEEDCRNG), as a VM
// generation ID change would.

const (
	maxEntropyBytes = 512
	rndAddEntropy   = 0x40085203 // _IOW('R', 0x03, int[2])
	rndReseedCRNG   = 0x5207     // _IO('R', 0x07)
)

// addEntropy credits the base64 bytes in b64 to the kernel's pool and reseeds its CRNG.
func addEntropy(b64 string) error {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return fmt.Errorf("vireoEntropy is not base64: %v", err)
	}
	if len(raw) == 0 || len(raw) > maxEntropyBytes {
		return fmt.Errorf("vireoEntropy must be 1 to %d bytes", maxEntropyBytes)
	}
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(raw))
	*(*int32)(unsafe.Pointer(&info[0])) = int32(len(raw) * 8)
	*(*int32)(unsafe.Pointer(&info[4])) = int32(len(raw))
	copy(info[8:], raw)
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return fmt.Errorf("RNDADDENTROPY: %v", e)
	}
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), rndReseedCRNG, 0); e != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %v", e)
	}
	return nil
}
