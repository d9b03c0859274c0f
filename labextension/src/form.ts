/**
 * "New training": a job from a file, the current notebook, a git URL or code, with resources
 * per role, parameters or a grid, pool, priority, dependencies, alerts and a maximum run time.
 * The form checks what it can; the service checks again, and its 400 messages are shown next to
 * the field they name.
 */
import { postJSON } from './api';
import { clear, h } from './dom';
import {
  buildSpecs,
  describeError,
  emptyForm,
  FieldErrors,
  formFieldOf,
  ITrainingForm,
  MLPError
} from './model';

type Input = HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement;

export class TrainingForm {
  readonly node = h('form', { className: 'mlp-form', 'data-testid': 'mlp-form' });
  private readonly inputs: { [key: string]: Input } = {};
  private readonly errorEls: { [field: string]: HTMLElement } = {};
  private readonly resultEl = h('div', { className: 'mlp-form-result', 'data-testid': 'mlp-form-result' });
  private readonly submitButton = h('button', { type: 'submit', className: 'jp-mod-styled jp-mod-accept' }, 'Submit');
  private readonly alertBoxes: HTMLInputElement[] = [];

  constructor(private readonly onSubmitted: (ids: number[]) => void) {
    this.node.addEventListener('submit', e => {
      e.preventDefault();
      void this.submit();
    });
    this.build();
  }

  private field(key: string, label: string, input: Input, help = ''): HTMLElement {
    input.name = key;
    input.dataset.field = key;
    this.inputs[key] = input;
    const err = h('div', { className: 'mlp-field-error', 'data-error-for': key });
    this.errorEls[key] = err;
    return h(
      'label',
      { className: 'mlp-field', 'data-field-row': key },
      h('span', { className: 'mlp-field-label' }, label),
      input,
      help ? h('span', { className: 'mlp-field-help' }, help) : null,
      err
    );
  }

  private text(placeholder = ''): HTMLInputElement {
    return h('input', { type: 'text', placeholder });
  }

  private build(): void {
    const kind = h(
      'select',
      {},
      h('option', { value: 'path' }, 'a file in my folder'),
      h('option', { value: 'git' }, 'a git repository'),
      h('option', { value: 'inline' }, 'code (or the current notebook)')
    );
    kind.addEventListener('change', () => this.showSource());
    const area = (rows: number, placeholder: string) => h('textarea', { rows, placeholder });
    const roleRow = (role: string, count: string) =>
      h(
        'div',
        { className: 'mlp-role' },
        h('b', {}, role),
        this.field(`${role}.count`, 'count', h('input', { type: 'number', min: 0, value: count })),
        this.field(`${role}.cpu`, 'cpu', this.text('default')),
        this.field(`${role}.memory`, 'memory', this.text('e.g. 2Gi')),
        this.field(`${role}.gpu`, 'gpu', this.text('0'))
      );
    const alerts = h('div', { className: 'mlp-alerts' });
    for (const on of ['failed', 'timed_out', 'succeeded', 'preempted', 'cancelled']) {
      const box = h('input', { type: 'checkbox', value: on });
      this.alertBoxes.push(box);
      alerts.append(h('label', {}, box, on));
    }
    this.node.append(
      h('div', { className: 'mlp-section-title' }, 'New training'),
      this.field('name', 'Name', this.text('my-model'), "lowercase letters, digits and '-'"),
      this.field('sourceKind', 'Train', kind),
      this.field('path', 'File', this.text('train.py'), 'relative to your home folder'),
      this.field('git', 'Git URL', this.text('https://github.com/me/repo.git')),
      this.field('ref', 'Branch / tag / commit', this.text('HEAD')),
      this.field('gitPath', 'Script in the repository', this.text('train.py')),
      this.field('inline', 'Code', area(6, 'import mlp_magics\n...')),
      roleRow('worker', '1'),
      roleRow('ps', '0'),
      this.field('params', 'Parameters', area(3, 'lr=0.01\nepochs=5'), 'name=value per line'),
      this.field('grid', 'Grid', area(2, 'lr=0.1,0.01'), 'name=v1,v2 per line: one job each, in a batch'),
      this.field('pool', 'Pool', this.text('default')),
      this.field('priority', 'Priority', this.text('0'), '-100 … 100'),
      this.field('dependsOn', 'After jobs', this.text('12, 13'), 'start after these succeed'),
      h('div', { className: 'mlp-field' }, h('span', { className: 'mlp-field-label' }, 'Alert on'), alerts),
      this.field('alertEmail', 'Alert email', this.text('me@example.org')),
      this.field('alertWebhook', 'Alert webhook', this.text('https://…')),
      this.field('maxRuntime', 'Max run time', this.text('2h')),
      h('div', { className: 'mlp-field-error', 'data-error-for': 'form' }),
      h('div', { className: 'mlp-form-actions' }, this.submitButton),
      this.resultEl
    );
    this.errorEls.form = this.node.querySelector('[data-error-for="form"]') as HTMLElement;
    this.errorEls.alerts = this.errorEls.alertEmail;
    this.showSource();
  }

  private showSource(): void {
    const kind = this.inputs.sourceKind.value;
    const show = (key: string, on: boolean) => {
      (this.node.querySelector(`[data-field-row="${key}"]`) as HTMLElement).hidden = !on;
    };
    show('path', kind === 'path');
    for (const key of ['git', 'ref', 'gitPath']) {
      show(key, kind === 'git');
    }
    show('inline', kind === 'inline');
  }

  /** Prefills the form (from the file browser or the current notebook). */
  prefill(values: Partial<ITrainingForm>): void {
    for (const [key, value] of Object.entries(values)) {
      if (typeof value === 'string' && this.inputs[key]) {
        this.inputs[key].value = value;
      }
    }
    this.showSource();
    this.setErrors({});
    clear(this.resultEl);
  }

  read(): ITrainingForm {
    const form = emptyForm();
    const v = (k: string) => this.inputs[k]?.value ?? '';
    for (const key of Object.keys(form) as (keyof ITrainingForm)[]) {
      if (typeof form[key] === 'string') {
        (form as any)[key] = v(key);
      }
    }
    for (const role of ['worker', 'ps'] as const) {
      form[role] = {
        count: v(`${role}.count`),
        cpu: v(`${role}.cpu`),
        memory: v(`${role}.memory`),
        gpu: v(`${role}.gpu`)
      };
    }
    form.alertOn = this.alertBoxes.filter(b => b.checked).map(b => b.value);
    return form;
  }

  setErrors(errors: FieldErrors): void {
    for (const el of Object.values(this.errorEls)) {
      el.textContent = '';
    }
    for (const [field, message] of Object.entries(errors)) {
      const key = this.formKey(field);
      const el = this.errorEls[key] || this.errorEls.form;
      el.textContent = el === this.errorEls.form && key !== 'form' ? `${field}: ${message}` : message;
    }
  }

  /** The form's field for a spec field name ("tasks.worker.cpu" → "worker.cpu"). */
  private formKey(field: string): string {
    const f = formFieldOf(field);
    const map: { [k: string]: string } = {
      'source.path': this.inputs.sourceKind.value === 'git' ? 'gitPath' : 'path',
      'source.git': 'git',
      'source.ref': 'ref',
      'source.inline': 'inline',
      depends_on: 'dependsOn',
      max_runtime: 'maxRuntime',
      alerts: 'alertEmail',
      batch: 'name'
    };
    if (map[f]) {
      return map[f];
    }
    const m = /^tasks\.(worker|ps|chief)\.(count|cpu|memory|gpu)$/.exec(f);
    if (m) {
      return `${m[1] === 'chief' ? 'worker' : m[1]}.${m[2]}`;
    }
    return this.errorEls[f] ? f : 'form';
  }

  async submit(): Promise<number[]> {
    clear(this.resultEl);
    const { specs, errors } = buildSpecs(this.read());
    this.setErrors(errors);
    if (!specs.length) {
      this.node.dataset.validation = 'client';
      return [];
    }
    this.submitButton.disabled = true;
    const ids: number[] = [];
    try {
      for (const spec of specs) {
        const job = await postJSON<{ id: number }>('jobs', spec);
        ids.push(job.id);
      }
      this.node.dataset.validation = 'ok';
      this.resultEl.textContent = `Submitted: job${ids.length > 1 ? 's' : ''} ${ids.join(', ')}`;
      this.onSubmitted(ids);
    } catch (e) {
      this.node.dataset.validation = 'service';
      if (e instanceof MLPError && e.status === 400 && e.field) {
        this.setErrors({ [e.field]: e.message });
      } else {
        this.setErrors({ form: describeError(e) });
      }
      if (ids.length) {
        this.resultEl.textContent = `Submitted ${ids.join(', ')} before the error`;
      }
    } finally {
      this.submitButton.disabled = false;
    }
    return ids;
  }
}
