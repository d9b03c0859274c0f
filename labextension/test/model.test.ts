import { describe, expect, it } from 'vitest';

import {
  buildSpecs,
  describeError,
  emptyForm,
  errorFromResponse,
  formatDuration,
  gridCombinations,
  IJob,
  jobRow,
  jobsFingerprint,
  MLPError,
  nameFromPath,
  notebookToSource,
  polylines,
  quotaBars,
  sortJobs,
  SSEParser,
  visibleRange
} from '../src/model';

function job(id: number, state: string, extra: Partial<IJob> = {}): IJob {
  return {
    id,
    user: 'alice',
    name: `job-${id}`,
    batch: null,
    state,
    reason: `${state} reason`,
    created_at: '2026-01-01T00:00:00Z',
    started_at: null,
    finished_at: null,
    group: 'default',
    pool: 'default',
    priority: 0,
    ...extra
  };
}

describe('jobs', () => {
  it('shows the blocking reason and queue position of a queued job in the service words', () => {
    const row = jobRow(
      job(3, 'Queued', {
        queue: {
          position: 2,
          blocking: [
            { reason: 'group default: cpu 70 of 64 requested', scope: 'group' },
            { reason: 'pool default full', scope: 'pool' }
          ]
        }
      }),
      Date.now()
    );
    expect(row.position).toBe('#3'); // the service counts from 0 (next)
    expect(row.reason).toBe('group default: cpu 70 of 64 requested; pool default full');
    expect(row.cancellable).toBe(true);
  });

  it('gives the duration of a finished job and no cancel', () => {
    const row = jobRow(
      job(1, 'Succeeded', { started_at: '2026-01-01T00:00:00Z', finished_at: '2026-01-01T01:02:03Z' }),
      Date.now()
    );
    expect(row.duration).toBe('1h 2m');
    expect(row.cancellable).toBe(false);
    expect(row.reason).toBe('Succeeded reason');
  });

  it('sorts active jobs by queue position first, then the rest newest first', () => {
    const jobs = [
      job(1, 'Succeeded'),
      job(2, 'Queued', { queue: { position: 2, blocking: [] } }),
      job(5, 'Failed'),
      job(3, 'Queued', { queue: { position: 1, blocking: [] } }),
      job(4, 'Running')
    ];
    expect(sortJobs(jobs).map(j => j.id)).toEqual([3, 2, 4, 5, 1]);
  });

  it('fingerprints what the list shows', () => {
    const a = [job(1, 'Running')];
    expect(jobsFingerprint(a)).toBe(jobsFingerprint([job(1, 'Running')]));
    expect(jobsFingerprint(a)).not.toBe(jobsFingerprint([job(1, 'Succeeded')]));
  });

  it('renders only the rows in view of a long list', () => {
    expect(visibleRange(0, 540, 54, 1000, 5)).toEqual({ start: 0, end: 15 });
    expect(visibleRange(54 * 500, 540, 54, 1000, 5)).toEqual({ start: 495, end: 515 });
    expect(visibleRange(54 * 2000, 540, 54, 1000, 5).end).toBe(1000);
  });

  it('formats durations', () => {
    expect(formatDuration(5)).toBe('5s');
    expect(formatDuration(125)).toBe('2m 5s');
    expect(formatDuration(90000)).toBe('1d 1h');
    expect(formatDuration(-1)).toBe('');
  });
});

describe('quota', () => {
  it('makes one bar per group, pool and resource with the expansion shown', () => {
    const bars = quotaBars({
      groups: {
        default: {
          pools: {
            default: {
              limit: { cpu: 8, memory: 16 * 2 ** 30, gpu: 0 },
              with_expansions: { cpu: 12, memory: 16 * 2 ** 30, gpu: 0 },
              used_by_group: { cpu: 6, memory: 2 ** 30, gpu: 0 }
            }
          }
        }
      }
    });
    expect(bars.map(b => b.resource)).toEqual(['cpu', 'memory']);
    expect(bars[0].fraction).toBe(0.5);
    expect(bars[0].label).toBe('6 / 12 (+4 expansion)');
    expect(bars[1].label).toBe('1Gi / 16Gi');
  });
});

describe('errors', () => {
  it('keeps the service message and names the field', () => {
    const e = errorFromResponse(
      400,
      JSON.stringify({ error: 'invalid_spec', message: 'tasks.worker.cpu: must be more than 0', field: 'tasks.worker.cpu' })
    );
    expect(e.field).toBe('tasks.worker.cpu');
    expect(describeError(e)).toBe('tasks.worker.cpu: must be more than 0 [HTTP 400 invalid_spec]');
  });

  it('explains a missing mlp scope instead of a bare 401', () => {
    const e = errorFromResponse(401, JSON.stringify({ error: 'unauthorized', message: 'missing or invalid token' }));
    expect(describeError(e)).toContain("'access:services!service=mlp' scope");
    expect(describeError(e)).toContain('missing or invalid token');
  });

  it('passes the unreachable reason through and copes with non-JSON bodies', () => {
    const down = new MLPError(502, 'unreachable', 'cannot reach the mlp service at http://x/ (refused)');
    expect(describeError(down)).toBe('cannot reach the mlp service at http://x/ (refused)');
    const html = errorFromResponse(500, '<html><body>Internal Server Error</body></html>');
    expect(html.message).toBe('HTTP 500: Internal Server Error');
  });
});

describe('the New training form', () => {
  const valid = () => ({ ...emptyForm(), name: 'mnist', path: 'train.py' });

  it('builds a spec from a file with resources, params, alerts and limits', () => {
    const form = valid();
    form.worker = { count: '2', cpu: '0.5', memory: '1Gi', gpu: '' };
    form.ps = { count: '1', cpu: '', memory: '', gpu: '' };
    form.params = 'lr=0.01\noptimizer=adam\nlayers=[64, 32]';
    form.priority = '10';
    form.dependsOn = '4, 5';
    form.alertOn = ['failed'];
    form.alertEmail = 'me@example.org';
    form.maxRuntime = '2h';
    form.pool = 'default';
    const { specs, errors } = buildSpecs(form);
    expect(errors).toEqual({});
    expect(specs).toEqual([
      {
        name: 'mnist',
        source: { path: 'train.py' },
        tasks: { worker: { count: 2, cpu: 0.5, memory: '1Gi' }, ps: { count: 1 } },
        params: { lr: 0.01, optimizer: 'adam', layers: [64, 32] },
        pool: 'default',
        priority: 10,
        depends_on: [4, 5],
        alerts: [{ on: ['failed'], email: 'me@example.org' }],
        max_runtime: '2h'
      }
    ]);
  });

  it('expands a grid into a batch of jobs', () => {
    const form = valid();
    form.grid = 'lr=0.1,0.01\nbatch_size=32,64';
    const { specs } = buildSpecs(form);
    expect(specs.map(s => s.name)).toEqual(['mnist-1', 'mnist-2', 'mnist-3', 'mnist-4']);
    expect(specs.every(s => s.batch === 'mnist')).toBe(true);
    expect(specs[3].params).toEqual({ lr: 0.01, batch_size: 64 });
    expect(gridCombinations([['a', [1, 2]], ['b', [3]]])).toEqual([{ a: 1, b: 3 }, { a: 2, b: 3 }]);
  });

  it('names every bad field before anything is sent', () => {
    const form = { ...emptyForm(), name: 'Bad Name', path: '../etc/passwd' };
    form.worker = { count: 'two', cpu: '', memory: '', gpu: '' };
    form.priority = '500';
    form.dependsOn = 'x';
    form.alertOn = ['failed'];
    form.maxRuntime = 'forever';
    form.params = 'no equals sign';
    const { specs, errors } = buildSpecs(form);
    expect(specs).toEqual([]);
    expect(Object.keys(errors).sort()).toEqual(
      ['alerts', 'depends_on', 'max_runtime', 'name', 'params', 'priority', 'source.path', 'tasks.worker.count'].sort()
    );
    expect(errors.priority).toBe('must be between -100 and 100, got 500');
  });

  it('refuses ps without workers and a git source that is not a URL', () => {
    const form = { ...emptyForm(), name: 'x1', sourceKind: 'git' as const, git: 'not a url' };
    form.worker = { count: '0', cpu: '', memory: '', gpu: '' };
    form.ps = { count: '1', cpu: '', memory: '', gpu: '' };
    const { errors } = buildSpecs(form);
    expect(errors['source.git']).toContain('git URL');
    expect(errors['tasks.worker.count']).toContain('ps tasks');
  });
});

describe('sources', () => {
  it('turns a notebook into a script without magics', () => {
    const code = notebookToSource([
      { cell_type: 'markdown', source: '# title' },
      { cell_type: 'code', source: ['%load_ext mlp_magics\n', 'import os\n', 'print(1)'] },
      { cell_type: 'code', source: '%%mlp_train\nprint(2)' },
      { cell_type: 'code', source: '!pip install x' }
    ]);
    expect(code).toBe('import os\nprint(1)\n');
  });

  it('derives a valid job name from a file name', () => {
    expect(nameFromPath('work/My Model_v2.py')).toBe('my-model-v2');
    expect(nameFromPath('___.py')).toBe('job');
  });
});

describe('server-sent events', () => {
  it('parses events split across chunks and skips keepalives', () => {
    const p = new SSEParser();
    expect(p.feed('event: log\ndata: {"task": "worker:0", "li')).toEqual([]);
    const events = p.feed('ne": "hi"}\n\n: keepalive\n\nevent: end\ndata: {"state": "Cancelled"}\n\n');
    expect(events).toEqual([
      { event: 'log', data: { task: 'worker:0', line: 'hi' } },
      { event: 'end', data: { state: 'Cancelled' } }
    ]);
  });
});

describe('metrics', () => {
  it('scales series into one box with shared axes', () => {
    const lines = polylines({ a: [[0, 0], [10, 1]], b: [[5, 0.5]] }, 100, 50);
    expect(lines.a).toBe('0.0,50.0 100.0,0.0');
    expect(lines.b).toBe('50.0,25.0');
    expect(polylines({}, 10, 10)).toEqual({});
  });
});
