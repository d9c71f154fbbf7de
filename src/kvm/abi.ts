/**
 * The KVM ABI for x86_64, from <linux/kvm.h>: ioctl numbers, exit reasons, and struct layouts.
 * test/kvm-abi.test.ts compiles a probe against the real header and checks every number here.
 */

const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;
const KVMIO = 0xae;
const ioc = (dir: number, nr: number, size: number): number => ((dir << 30) | (size << 16) | (KVMIO << 8) | nr) >>> 0;
const io = (nr: number): number => ioc(IOC_NONE, nr, 0);
const ior = (nr: number, size: number): number => ioc(IOC_READ, nr, size);
const iow = (nr: number, size: number): number => ioc(IOC_WRITE, nr, size);
const iowr = (nr: number, size: number): number => ioc(IOC_READ | IOC_WRITE, nr, size);

/** Struct sizes in bytes. */
export const SIZE = {
  kvm_regs: 144,
  kvm_segment: 24,
  kvm_dtable: 16,
  kvm_sregs: 312,
  kvm_fpu: 416,
  kvm_run: 2352,
  kvm_cpuid2: 8,
  kvm_cpuid_entry2: 40,
  kvm_msrs: 8,
  kvm_msr_entry: 16,
  kvm_msr_list: 4,
  kvm_userspace_memory_region: 32,
  kvm_irqfd: 32,
  kvm_ioeventfd: 64,
  kvm_pit_config: 64,
  kvm_lapic_state: 1024,
  kvm_irq_level: 8,
  kvm_mp_state: 4,
  kvm_vcpu_events: 64,
  kvm_xcrs: 392,
  kvm_xsave: 4096,
  kvm_clock_data: 48,
  kvm_irqchip: 520,
  kvm_pit_state2: 112,
  kvm_dirty_log: 16,
  kvm_enable_cap: 104,
} as const;

export const IOCTL = {
  KVM_GET_API_VERSION: io(0x00),
  KVM_CREATE_VM: io(0x01),
  KVM_GET_MSR_INDEX_LIST: iowr(0x02, SIZE.kvm_msr_list),
  KVM_CHECK_EXTENSION: io(0x03),
  KVM_GET_VCPU_MMAP_SIZE: io(0x04),
  KVM_GET_SUPPORTED_CPUID: iowr(0x05, SIZE.kvm_cpuid2),
  KVM_CREATE_VCPU: io(0x41),
  KVM_GET_DIRTY_LOG: iow(0x42, SIZE.kvm_dirty_log),
  KVM_SET_USER_MEMORY_REGION: iow(0x46, SIZE.kvm_userspace_memory_region),
  KVM_SET_TSS_ADDR: io(0x47),
  KVM_SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  KVM_CREATE_IRQCHIP: io(0x60),
  KVM_IRQ_LINE: iow(0x61, SIZE.kvm_irq_level),
  KVM_GET_IRQCHIP: iowr(0x62, SIZE.kvm_irqchip),
  KVM_SET_IRQCHIP: ior(0x63, SIZE.kvm_irqchip),
  KVM_IRQFD: iow(0x76, SIZE.kvm_irqfd),
  KVM_CREATE_PIT2: iow(0x77, SIZE.kvm_pit_config),
  KVM_IOEVENTFD: iow(0x79, SIZE.kvm_ioeventfd),
  KVM_SET_CLOCK: iow(0x7b, SIZE.kvm_clock_data),
  KVM_GET_CLOCK: ior(0x7c, SIZE.kvm_clock_data),
  KVM_GET_PIT2: ior(0x9f, SIZE.kvm_pit_state2),
  KVM_SET_PIT2: iow(0xa0, SIZE.kvm_pit_state2),
  KVM_ENABLE_CAP: iow(0xa3, SIZE.kvm_enable_cap),
  KVM_RUN: io(0x80),
  KVM_GET_REGS: ior(0x81, SIZE.kvm_regs),
  KVM_SET_REGS: iow(0x82, SIZE.kvm_regs),
  KVM_GET_SREGS: ior(0x83, SIZE.kvm_sregs),
  KVM_SET_SREGS: iow(0x84, SIZE.kvm_sregs),
  KVM_GET_MSRS: iowr(0x88, SIZE.kvm_msrs),
  KVM_SET_MSRS: iow(0x89, SIZE.kvm_msrs),
  KVM_GET_FPU: ior(0x8c, SIZE.kvm_fpu),
  KVM_SET_FPU: iow(0x8d, SIZE.kvm_fpu),
  KVM_GET_LAPIC: ior(0x8e, SIZE.kvm_lapic_state),
  KVM_SET_LAPIC: iow(0x8f, SIZE.kvm_lapic_state),
  KVM_SET_CPUID2: iow(0x90, SIZE.kvm_cpuid2),
  KVM_GET_CPUID2: iowr(0x91, SIZE.kvm_cpuid2),
  KVM_GET_MP_STATE: ior(0x98, SIZE.kvm_mp_state),
  KVM_SET_MP_STATE: iow(0x99, SIZE.kvm_mp_state),
  KVM_GET_VCPU_EVENTS: ior(0x9f, SIZE.kvm_vcpu_events),
  KVM_SET_VCPU_EVENTS: iow(0xa0, SIZE.kvm_vcpu_events),
  KVM_GET_XSAVE: ior(0xa4, SIZE.kvm_xsave),
  KVM_SET_XSAVE: iow(0xa5, SIZE.kvm_xsave),
  KVM_GET_XCRS: ior(0xa6, SIZE.kvm_xcrs),
  KVM_SET_XCRS: iow(0xa7, SIZE.kvm_xcrs),
  KVM_GET_TSC_KHZ: io(0xa3),
  KVM_SET_TSC_KHZ: io(0xa2),
} as const;

export type IoctlName = keyof typeof IOCTL;

export const KVM_API_VERSION = 12;

export const CAP = {
  KVM_CAP_IRQCHIP: 0,
  KVM_CAP_HLT: 1,
  KVM_CAP_USER_MEMORY: 3,
  KVM_CAP_SET_TSS_ADDR: 4,
  KVM_CAP_EXT_CPUID: 7,
  KVM_CAP_NR_VCPUS: 9,
  KVM_CAP_NR_MEMSLOTS: 10,
  KVM_CAP_PIT: 11,
  KVM_CAP_MP_STATE: 14,
  KVM_CAP_IRQ_ROUTING: 25,
  KVM_CAP_SET_IDENTITY_MAP_ADDR: 37,
  KVM_CAP_IOEVENTFD: 36,
  KVM_CAP_PIT2: 33,
  KVM_CAP_IRQFD: 32,
  KVM_CAP_ADJUST_CLOCK: 39,
  KVM_CAP_VCPU_EVENTS: 41,
  KVM_CAP_XSAVE: 55,
  KVM_CAP_XCRS: 56,
  KVM_CAP_TSC_CONTROL: 60,
  KVM_CAP_TSC_DEADLINE_TIMER: 72,
  KVM_CAP_MAX_VCPUS: 66,
  KVM_CAP_IMMEDIATE_EXIT: 136,
  KVM_CAP_DIRTY_LOG_RING: 192,
} as const;

export type CapName = keyof typeof CAP;

export const EXIT = {
  KVM_EXIT_UNKNOWN: 0,
  KVM_EXIT_EXCEPTION: 1,
  KVM_EXIT_IO: 2,
  KVM_EXIT_HYPERCALL: 3,
  KVM_EXIT_DEBUG: 4,
  KVM_EXIT_HLT: 5,
  KVM_EXIT_MMIO: 6,
  KVM_EXIT_IRQ_WINDOW_OPEN: 7,
  KVM_EXIT_SHUTDOWN: 8,
  KVM_EXIT_FAIL_ENTRY: 9,
  KVM_EXIT_INTR: 10,
  KVM_EXIT_INTERNAL_ERROR: 17,
  KVM_EXIT_SYSTEM_EVENT: 24,
} as const;

export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

export const SYSTEM_EVENT = { SHUTDOWN: 1, RESET: 2, CRASH: 3 } as const;

export const KVM_PIT_SPEAKER_DUMMY = 1;
export const KVM_MP_STATE = { RUNNABLE: 0, UNINITIALIZED: 1, INIT_RECEIVED: 2, HALTED: 3, SIPI_RECEIVED: 4 } as const;

/** Field offsets, checked against the real header by the ABI test. */
export const OFFSET = {
  kvm_run: {
    request_interrupt_window: 0,
    immediate_exit: 1,
    exit_reason: 8,
    ready_for_interrupt_injection: 12,
    if_flag: 13,
    flags: 14,
    cr8: 16,
    apic_base: 24,
    // the exit union starts at 32
    io_direction: 32,
    io_size: 33,
    io_port: 34,
    io_count: 36,
    io_data_offset: 40,
    mmio_phys_addr: 32,
    mmio_data: 40,
    mmio_len: 48,
    mmio_is_write: 52,
    fail_entry_hardware_entry_failure_reason: 32,
    fail_entry_cpu: 40,
    internal_suberror: 32,
    internal_ndata: 36,
    internal_data: 40,
    system_event_type: 32,
    system_event_ndata: 36,
    system_event_data: 40,
    ex_exception: 32,
    ex_error_code: 36,
  },
  kvm_sregs: {
    cs: 0,
    ds: 24,
    es: 48,
    fs: 72,
    gs: 96,
    ss: 120,
    tr: 144,
    ldt: 168,
    gdt: 192,
    idt: 208,
    cr0: 224,
    cr2: 232,
    cr3: 240,
    cr4: 248,
    cr8: 256,
    efer: 264,
    apic_base: 272,
    interrupt_bitmap: 280,
  },
  kvm_segment: {
    base: 0,
    limit: 8,
    selector: 12,
    type: 14,
    present: 15,
    dpl: 16,
    db: 17,
    s: 18,
    l: 19,
    g: 20,
    avl: 21,
    unusable: 22,
  },
  kvm_fpu: {
    fpr: 0,
    fcw: 128,
    fsw: 130,
    ftwx: 132,
    last_opcode: 134,
    last_ip: 136,
    last_dp: 144,
    xmm: 152,
    mxcsr: 408,
  },
  kvm_userspace_memory_region: { slot: 0, flags: 4, guest_phys_addr: 8, memory_size: 16, userspace_addr: 24 },
  kvm_irqfd: { fd: 0, gsi: 4, flags: 8, resamplefd: 12 },
  kvm_ioeventfd: { datamatch: 0, addr: 8, len: 16, fd: 20, flags: 24 },
  kvm_cpuid_entry2: { function: 0, index: 4, flags: 8, eax: 12, ebx: 16, ecx: 20, edx: 24 },
  kvm_msr_entry: { index: 0, data: 8 },
  kvm_irq_level: { irq: 0, level: 4 },
  kvm_dirty_log: { slot: 0, dirty_bitmap: 8 },
} as const;

/** The names of kvm_regs' eighteen 64-bit fields, in order. */
export const REG_NAMES = [
  'rax',
  'rbx',
  'rcx',
  'rdx',
  'rsi',
  'rdi',
  'rsp',
  'rbp',
  'r8',
  'r9',
  'r10',
  'r11',
  'r12',
  'r13',
  'r14',
  'r15',
  'rip',
  'rflags',
] as const;

export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1;
export const KVM_IOEVENTFD_FLAG_PIO = 2;
export const KVM_IOEVENTFD_FLAG_DEASSIGN = 4;
export const KVM_IRQFD_FLAG_DEASSIGN = 1;
export const KVM_MEM_LOG_DIRTY_PAGES = 1;
export const KVM_MEM_READONLY = 2;
