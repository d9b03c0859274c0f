/**
 * The panel's model: pure functions over the mlp REST API's JSON (no DOM, no JupyterLab), so
 * they are unit-tested on their own. The widgets in panel.ts, logs.ts and metrics.ts render what
 * these functions compute.
 */

export type Resources = { [name: string]: number };

export interface IBlocker {
  reason: string;
  scope: string;
  resource?: string;
  requested?: number;
  available?: number;
}

export interface IQueueInfo {
  position: number | null;
  blocking: IBlocker[];
  waiting_for?: number[];
}

export interface IJob {
  id: number;
  user: string;
  name: string;
  batch: string | null;
  state: string;
  reason: string;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  group: string | null;
  pool: string | null;
  priority: number;
  queue?: IQueueInfo | null;
  spec?: { [key: string]: any };
  tasks?: { name: string; state: string }[];
}

/** An error of the service or of the way to it, with the service's own words. */
export class MLPError extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    message: string,
    readonly field: string | null = null,
    readonly body: { [key: string]: any } = {}
  ) {
    super(message);
  }
}

export const TERMINAL = new Set(['Succeeded', 'Failed', 'Cancelled', 'TimedOut']);
export const ACTIVE = new Set(['Queued', 'Starting', 'Running']);

export function isTerminal(state: string): boolean {
  return TERMINAL.has(state);
}

/** A sentence for the panel's error state: what failed and what to do. */
export function describeError(e: unknown): string {
  if (!(e instanceof MLPError)) {
    return `the panel could not reach this notebook server (${String(e)}); it retries by itself`;
  }
  if (e.status === 401) {
    return (
      'this notebook server may not use the mlp service: its token lacks the ' +
      "'access:services!service=mlp' scope (the service said: " +
      e.message +
      '). Ask a platform admin to give you access to mlp, then restart your server ' +
      '(File > Hub Control Panel).'
    );
  }
  if (e.error === 'unreachable' || e.error === 'timeout' || e.error === 'not_configured') {
    return e.message;
  }
  const where = e.field && !e.message.includes(e.field) ? ` (field ${e.field})` : '';
  return `${e.message}${where} [HTTP ${e.status} ${e.error}]`;
}

/** Builds an MLPError from a response's status and body text, whatever its shape. */
export function errorFromResponse(status: number, text: string): MLPError {
  let body: { [key: string]: any } = {};
  try {
    body = JSON.parse(text);
  } catch {
    body = {};
  }
  if (body && typeof body.message === 'string') {
    return new MLPError(status, String(body.error || 'error'), body.message, body.field ?? null, body);
  }
  const snippet = text.replace(/<[^>]*>/g, ' ').replace(/\s+/g, ' ').trim().slice(0, 200);
  return new MLPError(status, 'http_error', `HTTP ${status}${snippet ? `: ${snippet}` : ''}`);
}

// ----------------------------------------------------------------------------- time
export function parseTime(iso: string | null | undefined): number | null {
  if (!iso) {
    return null;
  }
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) {
    return '';
  }
  const s = Math.floor(seconds);
  if (s < 60) {
    return `${s}s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)}m ${s % 60}s`;
  }
  if (s < 86400) {
    return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  }
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** Run time so far (or in all once finished), '' before the start. */
export function jobDuration(job: IJob, now: number): string {
  const start = parseTime(job.started_at);
  if (start === null) {
    return '';
  }
  const end = parseTime(job.finished_at) ?? now;
  return formatDuration((end - start) / 1000);
}

// ----------------------------------------------------------------------------- jobs
export interface IJobRow {
  id: number;
  name: string;
  batch: string;
  state: string;
  /** The service's words: the blocking reason while queued, else the state's reason. */
  reason: string;
  position: string;
  started: string;
  duration: string;
  cancellable: boolean;
}

export function jobRow(job: IJob, now: number): IJobRow {
  const queue = job.queue;
  let reason = job.reason || '';
  if (job.state === 'Queued' && queue && queue.blocking && queue.blocking.length) {
    reason = queue.blocking.map(b => b.reason).join('; ');
  }
  const started = parseTime(job.started_at);
  return {
    id: job.id,
    name: job.name,
    batch: job.batch || '',
    state: job.state,
    reason,
    position: job.state === 'Queued' && queue && queue.position !== null ? `#${queue.position + 1}` : '',
    started: started === null ? '' : new Date(started).toLocaleTimeString(),
    duration: jobDuration(job, now),
    cancellable: !isTerminal(job.state)
  };
}

/** Active jobs first (queue order), then the rest newest first. */
export function sortJobs(jobs: IJob[]): IJob[] {
  const rank = (j: IJob) => (isTerminal(j.state) ? 1 : 0);
  return [...jobs].sort((a, b) => {
    if (rank(a) !== rank(b)) {
      return rank(a) - rank(b);
    }
    const pa = a.queue?.position ?? Number.MAX_SAFE_INTEGER;
    const pb = b.queue?.position ?? Number.MAX_SAFE_INTEGER;
    if (rank(a) === 0 && pa !== pb) {
      return pa - pb;
    }
    return b.id - a.id;
  });
}

/** A cheap fingerprint of what the list shows, to tell the poll whether something changed. */
export function jobsFingerprint(jobs: IJob[]): string {
  return jobs
    .map(j => `${j.id}:${j.state}:${j.queue?.position ?? ''}:${j.reason}:${j.finished_at ?? ''}`)
    .join('|');
}

export interface IBatchSummary {
  batch: string;
  total: number;
  byState: { [state: string]: number };
  jobIds: number[];
}

export function batches(jobs: IJob[]): IBatchSummary[] {
  const out = new Map<string, IBatchSummary>();
  for (const j of jobs) {
    if (!j.batch) {
      continue;
    }
    let b = out.get(j.batch);
    if (!b) {
      b = { batch: j.batch, total: 0, byState: {}, jobIds: [] };
      out.set(j.batch, b);
    }
    b.total += 1;
    b.byState[j.state] = (b.byState[j.state] || 0) + 1;
    b.jobIds.push(j.id);
  }
  return [...out.values()];
}

/** The rows of a virtualised list to render for a scroll position (with some overscan). */
export function visibleRange(
  scrollTop: number,
  viewport: number,
  rowHeight: number,
  total: number,
  overscan = 10
): { start: number; end: number } {
  const first = Math.floor(Math.max(0, scrollTop) / rowHeight);
  const count = Math.ceil(Math.max(viewport, rowHeight) / rowHeight);
  return {
    start: Math.max(0, first - overscan),
    end: Math.min(total, first + count + overscan)
  };
}

// ----------------------------------------------------------------------------- quota
export interface IQuotaBar {
  group: string;
  pool: string;
  resource: string;
  used: number;
  limit: number;
  nominal: number;
  /** 0..1 of the limit with expansions. */
  fraction: number;
  label: string;
}

export function formatAmount(resource: string, value: number): string {
  if (resource === 'memory') {
    const units = ['B', 'Ki', 'Mi', 'Gi', 'Ti'];
    let v = value;
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return `${Number(v.toFixed(1))}${units[i]}`;
  }
  return `${Number(value.toFixed(2))}`;
}

/** One bar per group, pool and resource with a limit: the group's use against its limit
 * (including active expansions). */
export function quotaBars(quota: { groups?: { [g: string]: any } }): IQuotaBar[] {
  const bars: IQuotaBar[] = [];
  for (const [group, g] of Object.entries(quota.groups || {})) {
    for (const [pool, p] of Object.entries<any>(g.pools || {})) {
      const limit: Resources = p.limit || {};
      const nominal: Resources = p.with_expansions || limit;
      const used: Resources = p.used_by_group || {};
      for (const resource of Object.keys(nominal)) {
        const cap = nominal[resource] ?? 0;
        if (!(cap > 0)) {
          continue;
        }
        const u = used[resource] ?? 0;
        const base = limit[resource] ?? cap;
        const extra = cap > base ? ` (+${formatAmount(resource, cap - base)} expansion)` : '';
        bars.push({
          group,
          pool,
          resource,
          used: u,
          limit: base,
          nominal: cap,
          fraction: Math.min(1, u / cap),
          label: `${formatAmount(resource, u)} / ${formatAmount(resource, cap)}${extra}`
        });
      }
    }
  }
  return bars;
}

// ----------------------------------------------------------------------------- the form
export interface IRoleForm {
  count: string;
  cpu: string;
  memory: string;
  gpu: string;
}

export interface ITrainingForm {
  name: string;
  sourceKind: 'path' | 'git' | 'inline';
  path: string;
  git: string;
  ref: string;
  gitPath: string;
  inline: string;
  worker: IRoleForm;
  ps: IRoleForm;
  /** One `name=value` per line (values parsed as JSON when they can be). */
  params: string;
  /** One `name=v1,v2,...` per line: one job per combination, in a batch. */
  grid: string;
  pool: string;
  priority: string;
  dependsOn: string;
  alertOn: string[];
  alertEmail: string;
  alertWebhook: string;
  maxRuntime: string;
}

export function emptyForm(): ITrainingForm {
  const role = (count: string): IRoleForm => ({ count, cpu: '', memory: '', gpu: '' });
  return {
    name: '',
    sourceKind: 'path',
    path: '',
    git: '',
    ref: '',
    gitPath: '',
    inline: '',
    worker: role('1'),
    ps: role('0'),
    params: '',
    grid: '',
    pool: '',
    priority: '',
    dependsOn: '',
    alertOn: [],
    alertEmail: '',
    alertWebhook: '',
    maxRuntime: ''
  };
}

export type FieldErrors = { [field: string]: string };

const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

function parseValue(raw: string): any {
  const text = raw.trim();
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function parseLines(text: string, field: string, errors: FieldErrors): [string, string][] {
  const out: [string, string][] = [];
  for (const line of text.split('\n')) {
    const l = line.trim();
    if (!l || l.startsWith('#')) {
      continue;
    }
    const eq = l.indexOf('=');
    if (eq <= 0) {
      errors[field] = `expected name=value on each line, got ${JSON.stringify(l)}`;
      continue;
    }
    out.push([l.slice(0, eq).trim(), l.slice(eq + 1).trim()]);
  }
  return out;
}

function wholeNumber(text: string, field: string, errors: FieldErrors, min: number, max: number) {
  if (!/^-?\d+$/.test(text.trim())) {
    errors[field] = `expected a whole number, got ${JSON.stringify(text)}`;
    return undefined;
  }
  const n = parseInt(text, 10);
  if (n < min || n > max) {
    errors[field] = `must be between ${min} and ${max}, got ${n}`;
    return undefined;
  }
  return n;
}

function role(form: IRoleForm, name: string, errors: FieldErrors): any {
  const count = wholeNumber(form.count || '0', `tasks.${name}.count`, errors, 0, 64);
  if (!count) {
    return undefined;
  }
  const out: any = { count };
  if (form.cpu.trim()) {
    out.cpu = /^\d+(\.\d+)?$/.test(form.cpu.trim()) ? parseFloat(form.cpu) : form.cpu.trim();
  }
  if (form.memory.trim()) {
    out.memory = form.memory.trim();
  }
  if (form.gpu.trim()) {
    const gpu = wholeNumber(form.gpu, `tasks.${name}.gpu`, errors, 0, 64);
    if (gpu !== undefined) {
      out.gpu = gpu;
    }
  }
  return out;
}

/**
 * The job specs a form describes (several for a grid, in one batch), or the errors to show next
 * to the fields. The service validates again: its 400 messages are shown the same way.
 */
export function buildSpecs(form: ITrainingForm): { specs: any[]; errors: FieldErrors } {
  const errors: FieldErrors = {};
  const name = form.name.trim();
  if (!name) {
    errors.name = 'a job name is required';
  } else if (!NAME_RE.test(name)) {
    errors.name =
      "use lowercase letters a-z, digits and '-', starting and ending with a letter or digit";
  }
  let source: any;
  if (form.sourceKind === 'path') {
    const p = form.path.trim();
    if (!p) {
      errors['source.path'] = 'choose a file (relative to your home folder)';
    } else if (p.startsWith('/') || p.split('/').includes('..')) {
      errors['source.path'] = 'must be relative to your home folder, without ..';
    }
    source = { path: p };
  } else if (form.sourceKind === 'git') {
    const url = form.git.trim();
    if (!/^(https?:\/\/|ssh:\/\/|git@|file:\/\/)\S+$/.test(url)) {
      errors['source.git'] = 'expected a git URL (https://, ssh://, git@ or file://)';
    }
    source = { git: url };
    if (form.ref.trim()) {
      source.ref = form.ref.trim();
    }
    if (form.gitPath.trim()) {
      source.path = form.gitPath.trim();
    }
  } else {
    if (!form.inline.trim()) {
      errors['source.inline'] = 'the training code is empty';
    }
    source = { inline: form.inline };
  }
  const spec: any = { name, source };
  const tasks: any = {};
  const worker = role(form.worker, 'worker', errors);
  const ps = role(form.ps, 'ps', errors);
  if (worker) {
    tasks.worker = worker;
  }
  if (ps) {
    tasks.ps = ps;
    if (!worker) {
      errors['tasks.worker.count'] = 'a job with ps tasks needs at least one worker';
    }
  }
  if (!worker && !ps) {
    errors['tasks.worker.count'] = 'at least one worker';
  }
  spec.tasks = tasks;
  const params: any = {};
  for (const [k, v] of parseLines(form.params, 'params', errors)) {
    params[k] = parseValue(v);
  }
  if (Object.keys(params).length) {
    spec.params = params;
  }
  if (form.pool.trim()) {
    spec.pool = form.pool.trim();
  }
  if (form.priority.trim()) {
    const p = wholeNumber(form.priority, 'priority', errors, -100, 100);
    if (p !== undefined) {
      spec.priority = p;
    }
  }
  if (form.dependsOn.trim()) {
    const ids = form.dependsOn.split(/[\s,]+/).filter(Boolean);
    if (!ids.every(i => /^\d+$/.test(i) && parseInt(i, 10) > 0)) {
      errors.depends_on = 'expected job ids (positive whole numbers), separated by commas';
    } else {
      spec.depends_on = ids.map(i => parseInt(i, 10));
    }
  }
  if (form.alertOn.length) {
    const alert: any = { on: form.alertOn };
    if (form.alertEmail.trim()) {
      alert.email = form.alertEmail.trim();
    }
    if (form.alertWebhook.trim()) {
      alert.webhook = form.alertWebhook.trim();
    }
    if (!alert.email && !alert.webhook) {
      errors.alerts = 'give an email address or a webhook URL for the alerts';
    }
    spec.alerts = [alert];
  }
  if (form.maxRuntime.trim()) {
    const m = form.maxRuntime.trim();
    if (!/^\d+(\.\d+)?[smhd]?$/.test(m)) {
      errors.max_runtime = 'expected a duration such as 3600, 90s, 30m, 2h or 1d';
    }
    spec.max_runtime = /^\d+(\.\d+)?$/.test(m) ? parseFloat(m) : m;
  }
  const grid = parseLines(form.grid, 'grid', errors).map(
    ([k, v]) => [k, v.split(',').map(parseValue)] as [string, any[]]
  );
  if (Object.keys(errors).length) {
    return { specs: [], errors };
  }
  if (!grid.length) {
    return { specs: [spec], errors };
  }
  const combos = gridCombinations(grid);
  if (combos.length > 100) {
    errors.grid = `the grid makes ${combos.length} jobs; at most 100 at once`;
    return { specs: [], errors };
  }
  const specs = combos.map((combo, i) => ({
    ...spec,
    name: `${name}-${i + 1}`.slice(0, 63),
    batch: name,
    params: { ...(spec.params || {}), ...combo }
  }));
  return { specs, errors };
}

export function gridCombinations(grid: [string, any[]][]): { [k: string]: any }[] {
  let combos: { [k: string]: any }[] = [{}];
  for (const [key, values] of grid) {
    const next: { [k: string]: any }[] = [];
    for (const c of combos) {
      for (const v of values) {
        next.push({ ...c, [key]: v });
      }
    }
    combos = next;
  }
  return combos;
}

/** Maps a service error's field (e.g. "tasks.worker.cpu") to the form's field names. */
export function formFieldOf(field: string | null): string {
  if (!field) {
    return 'form';
  }
  if (field.startsWith('alerts')) {
    return 'alerts';
  }
  if (field.startsWith('params')) {
    return 'params';
  }
  return field;
}

/** Python source of a notebook's code cells, without IPython magics and shell escapes. */
export function notebookToSource(cells: { cell_type: string; source: string | string[] }[]): string {
  const parts: string[] = [];
  for (const cell of cells) {
    if (cell.cell_type !== 'code') {
      continue;
    }
    const text = Array.isArray(cell.source) ? cell.source.join('') : cell.source;
    if (text.trimStart().startsWith('%%')) {
      continue;
    }
    const lines = text.split('\n').filter(l => !/^\s*[%!]/.test(l));
    if (lines.join('').trim()) {
      parts.push(lines.join('\n'));
    }
  }
  return parts.join('\n\n') + '\n';
}

/** A job name from a file name: lowercase, '-' for anything else, trimmed to 63 characters. */
export function nameFromPath(path: string): string {
  const base = path.split('/').pop() || 'job';
  const stem = base.replace(/\.[^.]*$/, '');
  const name = stem
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 63)
    .replace(/-+$/, '');
  return name || 'job';
}

// ----------------------------------------------------------------------------- logs (SSE)
export interface ISSEEvent {
  event: string;
  data: any;
}

/** Incremental parser of a text/event-stream: feed chunks, get complete events. */
export class SSEParser {
  private buffer = '';

  feed(chunk: string): ISSEEvent[] {
    this.buffer += chunk;
    const events: ISSEEvent[] = [];
    let cut: number;
    while ((cut = this.buffer.indexOf('\n\n')) >= 0) {
      const block = this.buffer.slice(0, cut);
      this.buffer = this.buffer.slice(cut + 2);
      let event = 'message';
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) {
          continue;
        }
        if (line.startsWith('event:')) {
          event = line.slice(6).trim();
        } else if (line.startsWith('data:')) {
          data.push(line.slice(5).replace(/^ /, ''));
        }
      }
      if (!data.length) {
        continue;
      }
      let parsed: any = data.join('\n');
      try {
        parsed = JSON.parse(parsed);
      } catch {
        // plain text data stays a string
      }
      events.push({ event, data: parsed });
    }
    return events;
  }
}

// ----------------------------------------------------------------------------- metrics
export type Series = [number, number][];

/** SVG polyline points of series scaled into a width x height box (shared scales). */
export function polylines(
  series: { [label: string]: Series },
  width: number,
  height: number
): { [label: string]: string } {
  const all = Object.values(series).flat();
  if (!all.length) {
    return {};
  }
  const xs = all.map(p => p[0]);
  const ys = all.map(p => p[1]).filter(y => Number.isFinite(y));
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x: number) => (x1 === x0 ? width / 2 : ((x - x0) / (x1 - x0)) * width);
  const sy = (y: number) => (y1 === y0 ? height / 2 : height - ((y - y0) / (y1 - y0)) * height);
  const out: { [label: string]: string } = {};
  for (const [label, points] of Object.entries(series)) {
    out[label] = points
      .filter(p => Number.isFinite(p[1]))
      .map(p => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`)
      .join(' ');
  }
  return out;
}

/** The metric names present in a metrics answer ({tasks: {task: {name: [[step, value]]}}}). */
export function metricNames(answers: { tasks?: { [t: string]: { [m: string]: Series } } }[]) {
  const names = new Set<string>();
  for (const a of answers) {
    for (const t of Object.values(a.tasks || {})) {
      Object.keys(t).forEach(n => names.add(n));
    }
  }
  return [...names].sort();
}
