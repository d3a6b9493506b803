// cursor.js: the one resume cursor of a subscription, (epoch, offset),
// shared by every rung. It decides, offset by offset, what the application
// sees: anything at or below the cursor is a repeat and is dropped, a jump
// is a gap, and `truncated` moves the cursor to the server's new oldest
// offset (and epoch). Pure: no I/O, no timers, no events.

/** How far below the cursor a datagram is taken for an old repeat. */
const DATAGRAM_WINDOW = 4096;
/** How many datagram offsets are remembered to drop repeats. */
const DATAGRAM_SEEN_MAX = 8192;

export class Cursor {
  /** Datagrams may arrive in any order: remember which offsets were seen. */
  #seen;

  /**
   * `offset` null = live only, not positioned yet (the first `subscribed`
   * or message positions it). `unordered` is for datagram delivery.
   */
  constructor({ epoch = null, offset = null, unordered = false } = {}) {
    this.epoch = epoch;
    this.offset = offset === undefined || offset === null ? null : Number(offset);
    this.#seen = unordered ? new Set() : null;
  }

  /** The server confirmed a subscription: take its epoch and head if not positioned yet. */
  position(epoch, head) {
    if (epoch && this.epoch === null) this.epoch = epoch;
    if (this.offset === null && Number.isFinite(head)) this.offset = head;
  }

  /**
   * Decides about one delivered offset and moves the cursor. Returns
   * `{ deliver: false }` for a repeat, else `{ deliver: true, missing, outOfOrder }`:
   * `missing` offsets skipped over (ordered delivery only), `outOfOrder`
   * when a datagram came in below the highest offset seen.
   */
  admit(offset, epoch) {
    if (epoch && this.epoch === null) this.epoch = epoch;
    if (this.#seen) {
      // Datagrams: unordered and unreliable by nature. Drop repeats, note
      // reordering, keep the cursor at the highest offset seen.
      if (this.#seen.has(offset) || (this.offset !== null && offset <= this.offset - DATAGRAM_WINDOW)) {
        return { deliver: false };
      }
      this.#seen.add(offset);
      if (this.#seen.size > DATAGRAM_SEEN_MAX) this.#seen.delete(this.#seen.values().next().value);
      const outOfOrder = this.offset !== null && offset < this.offset;
      this.offset = this.offset === null ? offset : Math.max(this.offset, offset);
      return { deliver: true, missing: 0, outOfOrder };
    }
    if (this.offset !== null && offset <= this.offset) return { deliver: false };
    const missing = this.offset !== null && offset > this.offset + 1 ? offset - this.offset - 1 : 0;
    this.offset = offset;
    return { deliver: true, missing, outOfOrder: false };
  }

  /**
   * The server's history no longer reaches the cursor (or the channel's
   * epoch changed): resume from just below `oldest`. Returns the cursor as
   * it was before.
   */
  truncate(oldest, epoch) {
    const before = { epoch: this.epoch, offset: this.offset };
    const newEpoch = epoch && epoch !== before.epoch;
    const next = Math.max(0, Number(oldest) - 1);
    if (newEpoch || before.offset === null || next > before.offset) this.offset = next;
    if (epoch) this.epoch = epoch;
    this.#seen?.clear();
    return before;
  }
}
