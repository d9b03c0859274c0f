/**
 * jupyterhub-mlp: the mlp platform's side panel (my jobs, queue, quota, logs, metrics, New
 * training, admin views) and the file browser's "Train on the platform…" command.
 */
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget } from '@jupyterlab/apputils';
import { IFileBrowserFactory } from '@jupyterlab/filebrowser';
import { INotebookTracker } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { readContents } from './api';
import { LogViewer } from './logs';
import { MetricsViewer } from './metrics';
import { IJob, nameFromPath, notebookToSource } from './model';
import { MLPPanel } from './panel';

const ICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
  '<path d="M3 3h4v18H3zM10 9h4v12h-4zM17 13h4v8h-4z"/></g></svg>';

const mlpIcon = new LabIcon({ name: 'jupyterhub-mlp:icon', svgstr: ICON_SVG });

const COMMANDS = {
  open: 'mlp:open-panel',
  trainFile: 'mlp:train-file',
  trainNotebook: 'mlp:train-notebook'
};

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyterhub-mlp:plugin',
  description: 'The mlp platform side panel: jobs, queue, quota, logs, metrics and New training.',
  autoStart: true,
  requires: [IFileBrowserFactory],
  optional: [ILabShell, INotebookTracker, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    browsers: IFileBrowserFactory,
    labShell: ILabShell | null,
    notebooks: INotebookTracker | null,
    palette: ICommandPalette | null
  ) => {
    const openIn = (widget: Widget) => {
      const existing = Array.from(app.shell.widgets('main')).find(w => w.id === `${widget.id}-main`);
      if (existing) {
        widget.dispose();
        app.shell.activateById(existing.id);
        return;
      }
      const main = new MainAreaWidget({ content: widget });
      main.id = `${widget.id}-main`;
      main.title.label = widget.title.label;
      main.title.icon = mlpIcon;
      app.shell.add(main, 'main');
      app.shell.activateById(main.id);
    };
    const panel = new MLPPanel({
      openLogs: (job: IJob) => openIn(new LogViewer(job)),
      openMetrics: (jobs: IJob[], label: string) => openIn(new MetricsViewer(jobs, label))
    });
    panel.title.icon = mlpIcon;
    app.shell.add(panel, 'left', { rank: 600 });

    const showForm = () => {
      panel.showTab('new');
      app.shell.activateById(panel.id);
    };

    app.commands.addCommand(COMMANDS.open, {
      label: 'mlp: My jobs and quota',
      execute: () => app.shell.activateById(panel.id)
    });
    app.commands.addCommand(COMMANDS.trainFile, {
      label: 'Train on the platform…',
      icon: mlpIcon,
      isVisible: () => {
        const item = browsers.tracker.currentWidget?.selectedItems().next();
        return !!item && !item.done && item.value.type !== 'directory';
      },
      execute: async () => {
        const item = browsers.tracker.currentWidget?.selectedItems().next();
        if (!item || item.done) {
          return;
        }
        const path = item.value.path;
        if (path.endsWith('.ipynb')) {
          const nb = await readContents(path);
          panel.form.prefill({ name: nameFromPath(path), sourceKind: 'inline', inline: notebookToSource(nb.content.cells) });
        } else {
          panel.form.prefill({ name: nameFromPath(path), sourceKind: 'path', path });
        }
        showForm();
      }
    });
    app.commands.addCommand(COMMANDS.trainNotebook, {
      label: 'Train the current notebook on the platform…',
      icon: mlpIcon,
      isEnabled: () => !!notebooks?.currentWidget,
      execute: () => {
        const current = notebooks?.currentWidget;
        if (!current || !current.model) {
          return;
        }
        const nb = current.model.toJSON() as any;
        panel.form.prefill({
          name: nameFromPath(current.context.path),
          sourceKind: 'inline',
          inline: notebookToSource(nb.cells)
        });
        showForm();
      }
    });
    app.contextMenu.addItem({
      command: COMMANDS.trainFile,
      selector: '.jp-DirListing-item[data-isdir="false"]',
      rank: 20
    });
    if (palette) {
      for (const command of Object.values(COMMANDS)) {
        palette.addItem({ command, category: 'mlp' });
      }
    }
  }
};

export default plugin;
