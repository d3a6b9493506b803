// presence-view.js: the page's presence card. One list per channel the
// panels use (the always-on presence channel and the running workload's
// channel), each fed by one watching subscription's onPresence: the list
// starts from the server's snapshot (again after every resume) and follows
// the join and leave events in between (docs/protocol.md, Presence).
//
// Each channel's members and the joins and leaves heard are mirrored as
// plain data in `state.channels[channel]`, for the browser tests.

/** Joins and leaves kept per channel for the tests (oldest dropped first). */
const MAX_LOG = 200;

export class PresenceView {
  /**
   * `root` receives one block per channel; `state` is
   * window.ladderState.presence. The first channel tracked also fills the
   * card's #presence-list and #presence-count and `state.members` /
   * `state.log` (the page's original single list).
   */
  constructor(root, state) {
    Object.assign(this, { root, state, blocks: new Map(), primary: null });
    state.channels = {};
  }

  /**
   * Starts a list for `channel`; returns the onPresence callback to hand the
   * watching subscription. `caption` says who joins it.
   */
  track(channel, caption) {
    if (!this.blocks.has(channel)) {
      const el = document.createElement('div');
      el.className = 'presence-channel';
      el.dataset.channel = channel;
      el.innerHTML = '<h3></h3><p class="muted" data-role="caption"></p><p class="muted" data-role="count"></p><ul aria-live="polite"></ul>';
      el.querySelector('h3').textContent = channel;
      el.querySelector('[data-role=caption]').textContent = caption;
      if (this.primary === null) {
        this.primary = channel;
        el.querySelector('[data-role=count]').id = 'presence-count';
        el.querySelector('ul').id = 'presence-list';
      }
      this.root.append(el);
      this.blocks.set(channel, el);
      this.state.channels[channel] = { members: [], log: [] };
      this.render(channel);
    }
    return (members, change) => this.update(channel, members, change);
  }

  /** Removes `channel`'s list once no panel uses the channel any more. */
  untrack(channel) {
    if (channel === this.primary) return;
    this.blocks.get(channel)?.remove();
    this.blocks.delete(channel);
    delete this.state.channels[channel];
  }

  update(channel, members, change) {
    const c = this.state.channels[channel];
    if (!c) return;
    c.members = members;
    if (change.member) c.log.push({ type: change.type, id: change.member.id });
    if (c.log.length > MAX_LOG) c.log.shift();
    if (channel === this.primary) {
      this.state.members = c.members;
      this.state.log = c.log;
    }
    this.render(channel);
  }

  render(channel) {
    const el = this.blocks.get(channel);
    const c = this.state.channels[channel];
    if (!el || !c) return;
    el.querySelector('ul').replaceChildren(...c.members.map((m) => {
      const li = document.createElement('li');
      li.dataset.member = m.id;
      const rung = m.info?.rung ? ` · ${m.info.rung}` : '';
      li.textContent = m.info?.title ? `${m.info.title} (${m.id}${rung})` : m.id;
      return li;
    }));
    el.querySelector('[data-role=count]').textContent = `${c.members.length} in ${channel}`;
  }
}
