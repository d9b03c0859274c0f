/**
 * The left side panel: my quota, my jobs and batches (virtualised list), the New training form
 * and, for admins, the admin views. Refreshed by a lumino Poll that backs off on errors and
 * stands by while the panel is hidden.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { AdminView } from './admin';
import { requestAPI } from './api';
import { clear, h, stateBadge } from './dom';
import { TrainingForm } from './form';
import {
  batches,
  describeError,
  IJob,
  jobRow,
  jobsFingerprint,
  MLPError,
  quotaBars,
  sortJobs,
  visibleRange
} from './model';

export const ROW_HEIGHT = 54;

export interface IPanelActions {
  openLogs(job: IJob): void;
  openMetrics(jobs: IJob[], title: string): void;
}

type Tab = 'jobs' | 'new' | 'admin';

export class MLPPanel extends Widget {
  readonly poll: Poll;
  readonly form: TrainingForm;
  jobs: IJob[] = [];
  quota: any = null;
  error: string | null = null;
  isAdmin = false;
  /** Milliseconds the last job list render took (shown in a data attribute for tests). */
  lastRenderMs = 0;
  private fingerprint = '';
  private tab: Tab = 'jobs';
  private readonly statusEl = h('div', { className: 'mlp-status', 'data-testid': 'mlp-status' });
  private readonly quotaEl = h('div', { className: 'mlp-quota', 'data-testid': 'mlp-quota' });
  private readonly batchesEl = h('div', { className: 'mlp-batches' });
  private readonly countEl = h('div', { className: 'mlp-count', 'data-testid': 'mlp-count' });
  private readonly scroller = h('div', { className: 'mlp-jobs', 'data-testid': 'mlp-jobs' });
  private readonly spacer = h('div', { className: 'mlp-jobs-spacer' });
  private readonly rowsEl = h('div', { className: 'mlp-jobs-rows' });
  private readonly pages: { [t in Tab]: HTMLElement };
  private readonly tabButtons: { [t in Tab]: HTMLButtonElement };
  private readonly admin: AdminView;

  constructor(private readonly actions: IPanelActions) {
    super();
    this.id = 'mlp-panel';
    this.addClass('mlp-panel');
    this.title.caption = 'mlp: my jobs, quota and queue';
    this.form = new TrainingForm(() => this.submitted());
    this.admin = new AdminView();
    this.scroller.append(this.spacer);
    this.spacer.append(this.rowsEl);
    this.scroller.addEventListener('scroll', () => this.renderRows());
    const tab = (t: Tab, label: string) =>
      h('button', { className: 'mlp-tab', 'data-tab': t, onclick: () => this.showTab(t) }, label);
    this.tabButtons = {
      jobs: tab('jobs', 'Jobs'),
      new: tab('new', 'New training'),
      admin: tab('admin', 'Admin')
    };
    this.tabButtons.admin.hidden = true;
    this.pages = {
      jobs: h('div', { className: 'mlp-page' }, this.quotaEl, this.batchesEl, this.countEl, this.scroller),
      new: h('div', { className: 'mlp-page' }, this.form.node),
      admin: h('div', { className: 'mlp-page' }, this.admin.node)
    };
    this.node.append(
      h('div', { className: 'mlp-tabs' }, ...Object.values(this.tabButtons)),
      this.statusEl,
      ...Object.values(this.pages)
    );
    this.showTab('jobs');
    this.poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: 2000, backoff: true, max: 10000 },
      standby: () => !this.isVisible || document.visibilityState === 'hidden',
      name: 'mlp:panel'
    });
  }

  showTab(tab: Tab): void {
    this.tab = tab;
    for (const [t, page] of Object.entries(this.pages)) {
      page.hidden = t !== tab;
      this.tabButtons[t as Tab].classList.toggle('mlp-tab-active', t === tab);
    }
    if (tab === 'admin') {
      void this.admin.refresh();
    }
    if (tab === 'jobs') {
      this.renderRows();
    }
  }

  /** Refresh now (after an action), without waiting for the next tick. */
  async refreshNow(): Promise<void> {
    await this.poll.refresh();
    await this.poll.tick;
  }

  /** One poll: jobs and quota; rejects on errors so the Poll backs off (and shows why). */
  async refresh(): Promise<void> {
    const t0 = performance.now();
    try {
      const [jobs, quota] = await Promise.all([
        requestAPI<{ jobs: IJob[] }>('jobs?limit=5000'),
        requestAPI('quota')
      ]);
      if (!this.isAdmin) {
        this.isAdmin = await this.probeAdmin();
      }
      this.error = null;
      this.quota = quota;
      this.setJobs(jobs.jobs);
      this.renderQuota();
      this.renderStatus();
      this.scroller.dataset.refreshMs = (performance.now() - t0).toFixed(1);
    } catch (e) {
      this.error = describeError(e);
      this.renderStatus();
      throw e;
    }
  }

  private async probeAdmin(): Promise<boolean> {
    try {
      await requestAPI('admin/usage');
      this.tabButtons.admin.hidden = false;
      return true;
    } catch (e) {
      if (e instanceof MLPError && e.status === 403) {
        return false;
      }
      throw e;
    }
  }

  setJobs(jobs: IJob[]): void {
    const fp = jobsFingerprint(jobs);
    const changed = fp !== this.fingerprint;
    this.fingerprint = fp;
    this.jobs = sortJobs(jobs);
    if (changed) {
      this.renderBatches();
    }
    this.renderRows(); // durations move even when nothing else did
  }

  private renderStatus(): void {
    clear(this.statusEl);
    this.statusEl.classList.toggle('mlp-error', !!this.error);
    if (this.error) {
      this.statusEl.append(
        h('span', { 'data-testid': 'mlp-error' }, `mlp service: ${this.error}`),
        h('button', { className: 'mlp-link', onclick: () => void this.poll.refresh() }, 'Retry now')
      );
    }
  }

  private renderQuota(): void {
    clear(this.quotaEl);
    const bars = quotaBars(this.quota || {});
    if (!bars.length) {
      return;
    }
    this.quotaEl.append(h('div', { className: 'mlp-section-title' }, 'Quota'));
    for (const bar of bars) {
      const fill = h('div', { className: 'mlp-bar-fill' });
      fill.style.width = `${(bar.fraction * 100).toFixed(1)}%`;
      fill.classList.toggle('mlp-bar-full', bar.fraction >= 0.999);
      this.quotaEl.append(
        h(
          'div',
          {
            className: 'mlp-bar',
            'data-testid': `mlp-quota-${bar.group}-${bar.pool}-${bar.resource}`,
            'data-used': bar.used,
            'data-nominal': bar.nominal
          },
          h('span', { className: 'mlp-bar-name' }, `${bar.group} · ${bar.pool} · ${bar.resource}`),
          h('div', { className: 'mlp-bar-track' }, fill),
          h('span', { className: 'mlp-bar-label' }, bar.label)
        )
      );
    }
  }

  private renderBatches(): void {
    clear(this.batchesEl);
    const list = batches(this.jobs);
    if (!list.length) {
      return;
    }
    this.batchesEl.append(h('div', { className: 'mlp-section-title' }, 'Batches'));
    for (const b of list.slice(0, 20)) {
      const counts = Object.entries(b.byState)
        .map(([s, n]) => `${n} ${s}`)
        .join(', ');
      const jobs = this.jobs.filter(j => j.batch === b.batch);
      this.batchesEl.append(
        h(
          'div',
          { className: 'mlp-batch' },
          h('b', {}, b.batch),
          ` ${b.total} jobs: ${counts} `,
          h(
            'button',
            { className: 'mlp-link', onclick: () => this.actions.openMetrics(jobs, `batch ${b.batch}`) },
            'Compare'
          )
        )
      );
    }
  }

  /** Renders the rows in view only: 1,000 jobs cost as much as 20. */
  renderRows(): void {
    if (this.tab !== 'jobs') {
      return;
    }
    const t0 = performance.now();
    const total = this.jobs.length;
    const active = this.jobs.filter(j => !['Succeeded', 'Failed', 'Cancelled', 'TimedOut'].includes(j.state)).length;
    this.countEl.textContent = total ? `${total} jobs, ${active} active` : 'No jobs yet: use New training';
    this.spacer.style.height = `${total * ROW_HEIGHT}px`;
    const { start, end } = visibleRange(
      this.scroller.scrollTop,
      this.scroller.clientHeight || 600,
      ROW_HEIGHT,
      total
    );
    this.rowsEl.style.transform = `translateY(${start * ROW_HEIGHT}px)`;
    clear(this.rowsEl);
    const now = Date.now();
    for (const job of this.jobs.slice(start, end)) {
      this.rowsEl.append(this.renderRow(job, now));
    }
    this.lastRenderMs = performance.now() - t0;
    this.scroller.dataset.renderMs = this.lastRenderMs.toFixed(2);
    this.scroller.dataset.total = String(total);
  }

  private renderRow(job: IJob, now: number): HTMLElement {
    const row = jobRow(job, now);
    const el = h(
      'div',
      { className: 'mlp-job', 'data-job-id': row.id, 'data-state': row.state },
      h(
        'div',
        { className: 'mlp-job-line' },
        h('span', { className: 'mlp-job-name', title: `job ${row.id}` }, `${row.name} #${row.id}`),
        stateBadge(row.state),
        row.position ? h('span', { className: 'mlp-job-pos', title: 'queue position' }, row.position) : null,
        h('span', { className: 'mlp-job-time' }, row.duration || row.started),
        h('button', { className: 'mlp-link', onclick: () => this.actions.openLogs(job) }, 'Logs'),
        h(
          'button',
          { className: 'mlp-link', onclick: () => this.actions.openMetrics([job], `${row.name} #${row.id}`) },
          'Metrics'
        ),
        row.cancellable
          ? h('button', { className: 'mlp-link mlp-danger', onclick: () => void this.cancel(job) }, 'Cancel')
          : null
      ),
      h('div', { className: 'mlp-job-reason', title: row.reason }, row.reason)
    );
    el.style.height = `${ROW_HEIGHT}px`;
    return el;
  }

  async cancel(job: IJob): Promise<void> {
    const result = await showDialog({
      title: `Cancel ${job.name} #${job.id}?`,
      body: `The job is ${job.state}. Its tasks are stopped and it cannot be resumed.`,
      buttons: [Dialog.cancelButton({ label: 'Keep it' }), Dialog.warnButton({ label: 'Cancel job' })]
    });
    if (!result.button.accept) {
      return;
    }
    try {
      await requestAPI(`jobs/${job.id}`, { method: 'DELETE' });
    } catch (e) {
      void showDialog({
        title: `Could not cancel job ${job.id}`,
        body: describeError(e),
        buttons: [Dialog.okButton()]
      });
    }
    await this.refreshNow().catch(() => undefined);
  }

  private submitted(): void {
    this.showTab('jobs');
    void this.refreshNow().catch(() => undefined);
  }

  protected onAfterShow(): void {
    void this.poll.refresh();
  }

  dispose(): void {
    this.poll.dispose();
    super.dispose();
  }
}
