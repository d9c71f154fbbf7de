/** A typed EventEmitter: event names and payloads checked at compile time. */
import { EventEmitter } from 'node:events';

export class TypedEmitter<Events extends Record<string, unknown[]>> {
  private readonly ee = new EventEmitter();

  on<E extends keyof Events & string>(event: E, listener: (...args: Events[E]) => void): this {
    this.ee.on(event, listener as (...a: unknown[]) => void);
    return this;
  }

  once<E extends keyof Events & string>(event: E, listener: (...args: Events[E]) => void): this {
    this.ee.once(event, listener as (...a: unknown[]) => void);
    return this;
  }

  off<E extends keyof Events & string>(event: E, listener: (...args: Events[E]) => void): this {
    this.ee.off(event, listener as (...a: unknown[]) => void);
    return this;
  }

  protected emit<E extends keyof Events & string>(event: E, ...args: Events[E]): boolean {
    return this.ee.emit(event, ...args);
  }
}
