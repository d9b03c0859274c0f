/**
 * Admin views: usage per pool, group and user, the whole queue, temporary expansions (grant,
 * revoke) and promotion of a model to production. Shown only when the service answers the
 * admin calls (the user's server carries the mlp admin scope).
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';

import { postJSON, requestAPI } from './api';
import { clear, h } from './dom';
import { describeError, formatAmount, MLPError } from './model';

function amounts(r: { [k: string]: number } | undefined): string {
  return Object.entries(r || {})
    .filter(([, v]) => v)
    .map(([k, v]) => `${k} ${formatAmount(k, v)}`)
    .join(', ') || '0';
}

export class AdminView {
  readonly node = h('div', { className: 'mlp-admin', 'data-testid': 'mlp-admin' });
  private readonly usageEl = h('div', { 'data-testid': 'mlp-admin-usage' });
  private readonly queueEl = h('div', { 'data-testid': 'mlp-admin-queue' });
  private readonly expansionsEl = h('div', { 'data-testid': 'mlp-admin-expansions' });
  private readonly messageEl = h('div', { className: 'mlp-field-error', 'data-testid': 'mlp-admin-message' });
  private readonly grant: { [k: string]: HTMLInputElement } = {};
  private readonly promote: { [k: string]: HTMLInputElement } = {};

  constructor() {
    const input = (store: { [k: string]: HTMLInputElement }, key: string, placeholder: string) => {
      const el = h('input', { type: 'text', placeholder, name: key, 'data-field': key });
      store[key] = el;
      return h('label', { className: 'mlp-field' }, h('span', { className: 'mlp-field-label' }, key), el);
    };
    const grantForm = h(
      'form',
      { className: 'mlp-form', 'data-testid': 'mlp-grant-form' },
      h('div', { className: 'mlp-section-title' }, 'Grant a temporary expansion'),
      input(this.grant, 'group', 'default'),
      input(this.grant, 'pool', 'default'),
      input(this.grant, 'cpu', '4'),
      input(this.grant, 'memory', '8Gi'),
      input(this.grant, 'gpu', '0'),
      input(this.grant, 'duration', '2h'),
      input(this.grant, 'reason', 'deadline'),
      h('button', { type: 'submit', className: 'jp-mod-styled jp-mod-accept' }, 'Grant')
    );
    grantForm.addEventListener('submit', e => {
      e.preventDefault();
      void this.grantExpansion();
    });
    const promoteForm = h(
      'form',
      { className: 'mlp-form', 'data-testid': 'mlp-promote-form' },
      h('div', { className: 'mlp-section-title' }, 'Promote a model to production'),
      input(this.promote, 'user', 'alice'),
      input(this.promote, 'name', 'job name'),
      h('button', { type: 'submit', className: 'jp-mod-styled jp-mod-accept' }, 'Promote')
    );
    promoteForm.addEventListener('submit', e => {
      e.preventDefault();
      void this.promoteModel();
    });
    this.node.append(
      h('div', { className: 'mlp-section-title' }, 'Usage'),
      this.usageEl,
      h('div', { className: 'mlp-section-title' }, 'Queue (everyone)'),
      this.queueEl,
      h('div', { className: 'mlp-section-title' }, 'Expansions'),
      this.expansionsEl,
      this.messageEl,
      grantForm,
      promoteForm
    );
  }

  async refresh(): Promise<void> {
    try {
      const [usage, queue, expansions] = await Promise.all([
        requestAPI('admin/usage'),
        requestAPI('queue?user=*'),
        requestAPI('admin/expansions')
      ]);
      this.renderUsage(usage);
      this.renderQueue(queue.queue || []);
      this.renderExpansions(expansions.expansions || []);
    } catch (e) {
      this.messageEl.textContent = describeError(e);
    }
  }

  private renderUsage(usage: any): void {
    clear(this.usageEl);
    const rows: HTMLElement[] = [];
    for (const [pool, p] of Object.entries<any>(usage.pools || {})) {
      rows.push(h('tr', {}, h('td', {}, `pool ${pool}`), h('td', {}, amounts(p.used)), h('td', {}, amounts(p.capacity))));
    }
    for (const [group, g] of Object.entries<any>(usage.groups || {})) {
      for (const [pool, p] of Object.entries<any>(g.pools || {})) {
        rows.push(
          h('tr', {}, h('td', {}, `group ${group} · ${pool}`), h('td', {}, amounts(p.used)), h('td', {}, amounts(p.nominal)))
        );
      }
    }
    for (const [user, used] of Object.entries<any>(usage.users || {})) {
      rows.push(h('tr', {}, h('td', {}, `user ${user}`), h('td', {}, amounts(used)), h('td', {}, '')));
    }
    this.usageEl.append(
      h('table', { className: 'mlp-table' }, h('tr', {}, h('th', {}, ''), h('th', {}, 'used'), h('th', {}, 'of')), ...rows)
    );
  }

  private renderQueue(queue: any[]): void {
    clear(this.queueEl);
    if (!queue.length) {
      this.queueEl.textContent = 'nobody is waiting';
      return;
    }
    this.queueEl.append(
      h(
        'table',
        { className: 'mlp-table' },
        ...queue.map(q =>
          h(
            'tr',
            { 'data-job-id': q.id },
            h('td', {}, q.position === null ? '–' : `#${q.position + 1}`),
            h('td', {}, `${q.user}/${q.name} #${q.id}`),
            h('td', {}, (q.blocking || []).map((b: any) => b.reason).join('; '))
          )
        )
      )
    );
  }

  private renderExpansions(expansions: any[]): void {
    clear(this.expansionsEl);
    if (!expansions.length) {
      this.expansionsEl.textContent = 'none';
    }
    for (const x of expansions) {
      this.expansionsEl.append(
        h(
          'div',
          { className: 'mlp-expansion', 'data-expansion-id': x.id },
          `${x.group} · ${x.pool}: +${amounts(x.amount)} until ${new Date(x.expiry).toLocaleString()} (${x.reason}) `,
          h('button', { className: 'mlp-link mlp-danger', onclick: () => void this.revoke(x.id) }, 'Revoke')
        )
      );
    }
  }

  private async grantExpansion(): Promise<void> {
    const g = (k: string) => this.grant[k].value.trim();
    const amount: { [k: string]: any } = {};
    if (g('cpu')) {
      amount.cpu = /^\d+(\.\d+)?$/.test(g('cpu')) ? parseFloat(g('cpu')) : g('cpu');
    }
    if (g('memory')) {
      amount.memory = g('memory');
    }
    if (g('gpu')) {
      amount.gpu = parseInt(g('gpu'), 10);
    }
    const body = {
      group: g('group') || 'default',
      pool: g('pool') || 'default',
      amount,
      duration: g('duration'),
      reason: g('reason')
    };
    await this.act(async () => {
      const x = await postJSON('admin/expansions', body);
      return `granted expansion ${x.id} until ${new Date(x.expiry).toLocaleString()}`;
    });
  }

  private async revoke(id: string): Promise<void> {
    const result = await showDialog({
      title: `Revoke expansion ${id}?`,
      body: 'Jobs running on it may be preempted.',
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Revoke' })]
    });
    if (result.button.accept) {
      await this.act(async () => {
        const r = await requestAPI(`admin/expansions/${encodeURIComponent(id)}`, { method: 'DELETE' });
        return `revoked ${id}; preempted: ${(r.preempted || []).join(', ') || 'nothing'}`;
      });
    }
  }

  private async promoteModel(): Promise<void> {
    const body = { user: this.promote.user.value.trim(), name: this.promote.name.value.trim() };
    await this.act(async () => {
      const r = await postJSON('admin/promotions', body);
      return `promoted ${r.user}/${r.name}; moved to production: ${(r.moved_to_production || []).join(', ') || 'none'}`;
    });
  }

  private async act(action: () => Promise<string>): Promise<void> {
    try {
      this.messageEl.classList.remove('mlp-error');
      this.messageEl.textContent = await action();
    } catch (e) {
      this.messageEl.classList.add('mlp-error');
      this.messageEl.textContent = e instanceof MLPError ? describeError(e) : String(e);
    }
    await this.refresh();
  }
}
