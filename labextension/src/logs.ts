/**
 * A main-area log viewer that follows a job (server-sent events through this server's handler),
 * with a task selector. It says when the job ends, including when it is cancelled or deleted
 * elsewhere, and reconnects by itself (with backoff) when the stream drops while the job runs.
 */
import { Widget } from '@lumino/widgets';

import { openStream } from './api';
import { clear, h, stateBadge } from './dom';
import { describeError, IJob, MLPError, SSEParser } from './model';

const MAX_LINES = 5000;

export class LogViewer extends Widget {
  private readonly select = h('select', { 'data-testid': 'mlp-log-task' }, h('option', { value: '' }, 'all tasks'));
  private readonly stateEl = h('span', { className: 'mlp-log-state', 'data-testid': 'mlp-log-state' });
  private readonly pre = h('pre', { className: 'mlp-log', 'data-testid': 'mlp-log' });
  private readonly tasks = new Set<string>();
  private controller: AbortController | null = null;
  private ended = false;
  private lines = 0;
  private retryDelay = 1000;

  constructor(readonly job: IJob) {
    super();
    this.id = `mlp-logs-${job.id}`;
    this.addClass('mlp-log-viewer');
    this.title.label = `Logs: ${job.name} #${job.id}`;
    this.title.closable = true;
    this.select.addEventListener('change', () => this.restart());
    this.node.append(
      h('div', { className: 'mlp-log-toolbar' }, h('b', {}, `${job.name} #${job.id}`), this.select, this.stateEl),
      this.pre
    );
    this.setState(job.state, job.reason);
    void this.follow();
  }

  get task(): string {
    return this.select.value;
  }

  private setState(state: string, reason: string, ended = false): void {
    clear(this.stateEl);
    this.stateEl.append(stateBadge(state), ` ${reason}`);
    this.stateEl.dataset.state = state;
    this.node.dataset.ended = String(ended);
  }

  private addTask(task: string): void {
    if (!this.tasks.has(task)) {
      this.tasks.add(task);
      this.select.append(h('option', { value: task }, task));
    }
  }

  private append(text: string): void {
    const stick = this.pre.scrollTop + this.pre.clientHeight >= this.pre.scrollHeight - 20;
    this.pre.append(text + '\n');
    this.lines++;
    if (this.lines > MAX_LINES && this.pre.firstChild) {
      this.pre.removeChild(this.pre.firstChild);
      this.lines--;
    }
    if (stick) {
      this.pre.scrollTop = this.pre.scrollHeight;
    }
  }

  private restart(): void {
    this.controller?.abort();
    clear(this.pre);
    this.lines = 0;
    this.ended = false;
    void this.follow();
  }

  private async follow(): Promise<void> {
    const controller = new AbortController();
    this.controller = controller;
    const task = this.task ? `&task=${encodeURIComponent(this.task)}` : '';
    const parser = new SSEParser();
    try {
      const response = await openStream(`jobs/${this.job.id}/logs?follow=true&tail=500${task}`, controller.signal);
      const reader = response.body!.getReader();
      const decoder = new TextDecoder();
      this.retryDelay = 1000;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) {
          break;
        }
        for (const ev of parser.feed(decoder.decode(value, { stream: true }))) {
          this.handle(ev.event, ev.data);
        }
      }
    } catch (e) {
      if (controller.signal.aborted) {
        return;
      }
      if (e instanceof MLPError && (e.status === 404 || e.status === 403)) {
        // The job was deleted (or is no longer ours): nothing more will come.
        this.ended = true;
        this.setState('Gone', describeError(e), true);
        this.append(`[mlp] ${describeError(e)}`);
        return;
      }
      this.setState('Reconnecting', describeError(e));
    }
    if (!this.ended && !controller.signal.aborted && !this.isDisposed) {
      // The stream dropped while the job runs (service restart): follow again, with backoff.
      const delay = this.retryDelay;
      this.retryDelay = Math.min(this.retryDelay * 2, 30000);
      setTimeout(() => {
        if (this.controller === controller && !this.isDisposed) {
          clear(this.pre);
          this.lines = 0;
          void this.follow();
        }
      }, delay);
    }
  }

  private handle(event: string, data: any): void {
    if (event === 'log') {
      this.addTask(data.task);
      this.append(this.task ? data.line : `[${data.task}] ${data.line}`);
    } else if (event === 'state') {
      this.setState(data.state, data.reason);
    } else if (event === 'end') {
      this.ended = true;
      this.setState(data.state, data.reason, true);
      this.append(`[mlp] job ${this.job.id} ended: ${data.state} (${data.reason})`);
    }
  }

  dispose(): void {
    this.controller?.abort();
    this.controller = null;
    super.dispose();
  }
}
