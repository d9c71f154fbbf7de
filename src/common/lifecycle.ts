/**
 * Lifetimes with owners (the shape of VS Code's base/common/lifecycle.ts): whoever creates a
 * resource adds its release to a store at that moment, so one dispose() releases exactly what was
 * created, also after a start that failed halfway.
 */

/** Something that holds a resource and releases it in dispose(). */
export interface Disposable {
  dispose(): void;
}

/** A Disposable that runs `fn` once, on its first dispose(). */
export function toDisposable(fn: () => void): Disposable {
  let done = false;
  return {
    dispose() {
      if (done) return;
      done = true;
      fn();
    },
  };
}

/**
 * Owns disposables and releases them in the reverse order of adding (what was created last goes
 * first: it may depend on what came before). dispose() runs once; an error in one item does not
 * skip the others — it is rethrown after all ran (an AggregateError when more than one failed). An
 * item added to a store already disposed is disposed at once.
 */
export class DisposableStore implements Disposable {
  private readonly items: Disposable[] = [];
  private disposed = false;

  get isDisposed(): boolean {
    return this.disposed;
  }

  /** Takes ownership of `d` and returns it. */
  add<T extends Disposable>(d: T): T {
    if ((d as unknown) === this) throw new Error('a DisposableStore cannot own itself');
    if (this.disposed) d.dispose();
    else this.items.push(d);
    return d;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const errors: unknown[] = [];
    for (let d = this.items.pop(); d !== undefined; d = this.items.pop()) {
      try {
        d.dispose();
      } catch (e) {
        errors.push(e);
      }
    }
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, `${errors.length} resources failed to release`);
  }
}
