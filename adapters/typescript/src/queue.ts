/** A bounded async FIFO: `push` waits for room, `shift` waits for an item (with a timeout). */

export class AsyncQueue<T> {
  private items: T[] = [];
  private takers: ((v: T) => void)[] = [];
  private room: (() => void)[] = [];
  constructor(private readonly capacity = Infinity) {}

  get length(): number {
    return this.items.length;
  }

  /** Adds an item, waiting while the queue is full. */
  async push(item: T): Promise<void> {
    while (this.items.length >= this.capacity && this.takers.length === 0) {
      await new Promise<void>((r) => this.room.push(r));
    }
    this.pushNow(item);
  }

  /** Adds an item regardless of the capacity. */
  pushNow(item: T): void {
    const taker = this.takers.shift();
    if (taker) taker(item);
    else this.items.push(item);
  }

  /** Takes the next item; rejects with `onTimeout()` after `timeoutMs`. */
  shift(timeoutMs?: number, onTimeout?: () => Error): Promise<T> {
    if (this.items.length > 0) {
      const v = this.items.shift() as T;
      this.room.shift()?.();
      return Promise.resolve(v);
    }
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const taker = (v: T) => {
        if (timer) clearTimeout(timer);
        resolve(v);
      };
      this.takers.push(taker);
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          const i = this.takers.indexOf(taker);
          if (i >= 0) this.takers.splice(i, 1);
          reject(onTimeout ? onTimeout() : new Error("timed out"));
        }, timeoutMs);
      }
    });
  }

  /** Resolves every waiting `shift` with `value` (used to wake a writer whose session ended). */
  wakeTakers(value: T): void {
    const t = this.takers;
    this.takers = [];
    t.forEach((r) => r(value));
  }

  /** Takes an item if one is there. */
  tryShift(): T | undefined {
    if (this.items.length === 0) return undefined;
    const v = this.items.shift() as T;
    this.room.shift()?.();
    return v;
  }

  /** Removes every item for which `keep` is false. */
  filter(keep: (v: T) => boolean): void {
    this.items = this.items.filter(keep);
    while (this.room.length && this.items.length < this.capacity) this.room.shift()?.();
  }
}
