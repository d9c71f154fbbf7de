/** Guest-physical addresses are plain numbers: guests here stay below 2^53 bytes. */
export type GuestAddress = number & { readonly __brand: 'GuestAddress' };

export const GuestAddress = (n: number): GuestAddress => {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`invalid guest address ${n}`);
  return n as GuestAddress;
};

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

export const hex = (n: number | bigint, width = 0): string => `0x${n.toString(16).padStart(width, '0')}`;

export const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;
