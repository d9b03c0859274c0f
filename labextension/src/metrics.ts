/**
 * Metric curves of one job (one line per task) or of a batch's jobs side by side, refreshed by a
 * Poll while any of the jobs is active.
 */
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { requestAPI } from './api';
import { clear, h } from './dom';
import { describeError, IJob, isTerminal, metricNames, polylines, Series } from './model';

const W = 560;
const H = 220;
const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#17becf'];

export class MetricsViewer extends Widget {
  private readonly select = h('select', { 'data-testid': 'mlp-metric' });
  private readonly chart = h('div', { className: 'mlp-chart', 'data-testid': 'mlp-chart' });
  private readonly messageEl = h('div', { className: 'mlp-status' });
  private answers: { job: IJob; data: any }[] = [];
  private readonly poll: Poll;

  constructor(private readonly jobs: IJob[], label: string) {
    super();
    this.id = `mlp-metrics-${jobs.map(j => j.id).join('-')}`.slice(0, 120);
    this.addClass('mlp-metrics-viewer');
    this.title.label = `Metrics: ${label}`;
    this.title.closable = true;
    this.select.addEventListener('change', () => this.render());
    this.node.append(h('div', { className: 'mlp-log-toolbar' }, h('b', {}, label), this.select), this.messageEl, this.chart);
    this.poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: 3000, backoff: true, max: 30000 },
      standby: () => !this.isVisible || document.visibilityState === 'hidden',
      name: 'mlp:metrics'
    });
  }

  private async refresh(): Promise<void> {
    try {
      const answers = await Promise.all(
        this.jobs.map(async job => ({
          job: await requestAPI<IJob>(`jobs/${job.id}`),
          data: await requestAPI(`jobs/${job.id}/metrics?max_points=500`)
        }))
      );
      this.answers = answers;
      this.messageEl.textContent = '';
      this.render();
      if (answers.every(a => isTerminal(a.job.state))) {
        this.poll.stop(); // nothing more will come
      }
    } catch (e) {
      this.messageEl.textContent = describeError(e);
      throw e;
    }
  }

  private render(): void {
    const names = metricNames(this.answers.map(a => a.data));
    const current = this.select.value;
    clear(this.select);
    for (const n of names) {
      this.select.append(h('option', { value: n }, n));
    }
    if (names.includes(current)) {
      this.select.value = current;
    }
    const metric = this.select.value;
    clear(this.chart);
    if (!metric) {
      this.chart.textContent = 'no metrics reported yet (report them with mlp_magics.report)';
      return;
    }
    const series: { [label: string]: Series } = {};
    for (const { job, data } of this.answers) {
      for (const [task, metrics] of Object.entries<any>(data.tasks || {})) {
        if (metrics[metric]) {
          const label = this.jobs.length > 1 ? `${job.name}#${job.id} ${task}` : task;
          series[label] = metrics[metric].map((p: any[]) => [p[0], p[1]] as [number, number]);
        }
      }
    }
    const lines = polylines(series, W, H);
    const svgNS = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(svgNS, 'svg');
    svg.setAttribute('viewBox', `-5 -5 ${W + 10} ${H + 10}`);
    svg.setAttribute('width', String(W + 10));
    svg.setAttribute('height', String(H + 10));
    const legend = h('div', { className: 'mlp-legend' });
    Object.entries(lines).forEach(([label, points], i) => {
      const line = document.createElementNS(svgNS, 'polyline');
      line.setAttribute('points', points);
      line.setAttribute('fill', 'none');
      line.setAttribute('stroke', COLORS[i % COLORS.length]);
      line.setAttribute('stroke-width', '2');
      line.dataset.series = label;
      svg.append(line);
      const last = series[label][series[label].length - 1];
      const swatch = h('span', { className: 'mlp-swatch' });
      swatch.style.background = COLORS[i % COLORS.length];
      legend.append(h('span', {}, swatch, `${label}: ${last ? Number(last[1].toPrecision(4)) : ''} `));
    });
    this.chart.append(svg, legend);
  }

  dispose(): void {
    this.poll.dispose();
    super.dispose();
  }
}
