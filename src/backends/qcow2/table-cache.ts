/**
 * A bounded write-back cache of one-cluster qcow2 tables (L2 tables, refcount blocks) by file offset,
 * least recently used first out. A clean table leaves when the cache is over its bound; when every
 * table is dirty, the image's flush (which writes them in its safe order) runs first.
 */
interface Entry {
  buf: Buffer;
  dirty: boolean;
}

export class TableCache {
  private readonly map = new Map<number, Entry>();
  private last = -1;
  constructor(
    private readonly max: number,
    private readonly load: (offset: number) => Buffer,
    private readonly flush: () => void,
  ) {}

  get size(): number {
    return this.map.size;
  }

  has(offset: number): boolean {
    return this.map.has(offset);
  }

  get(offset: number): Buffer {
    const e = this.map.get(offset);
    if (e) {
      // Most lookups hit the table used last: it is already the newest.
      if (offset !== this.last) {
        this.map.delete(offset);
        this.map.set(offset, e);
        this.last = offset;
      }
      return e.buf;
    }
    const buf = this.load(offset);
    this.insert(offset, { buf, dirty: false });
    return buf;
  }

  /** Adds a table made in memory (a new one, or a copy). */
  put(offset: number, buf: Buffer, dirty: boolean): void {
    this.map.delete(offset);
    this.insert(offset, { buf, dirty });
  }

  /** The table at `offset` (this buffer) was changed. */
  markDirty(offset: number, buf: Buffer): void {
    const e = this.map.get(offset);
    if (e && e.buf === buf) e.dirty = true;
    else this.put(offset, buf, true);
  }

  dirty(): [number, Buffer][] {
    const out: [number, Buffer][] = [];
    for (const [off, e] of this.map) if (e.dirty) out.push([off, e.buf]);
    return out;
  }

  get dirtyCount(): number {
    let n = 0;
    for (const e of this.map.values()) if (e.dirty) n++;
    return n;
  }

  markClean(): void {
    for (const e of this.map.values()) e.dirty = false;
  }

  private insert(offset: number, e: Entry): void {
    this.map.set(offset, e);
    this.last = offset;
    let flushed = false;
    while (this.map.size > this.max) {
      let victim: number | undefined;
      for (const [off, x] of this.map) {
        if (!x.dirty) {
          victim = off;
          break;
        }
      }
      if (victim === undefined) {
        if (flushed) throw new Error('qcow2: the table cache is full of dirty tables after a flush');
        this.flush();
        flushed = true;
        continue;
      }
      this.map.delete(victim);
      if (victim === this.last) this.last = -1;
    }
  }
}
