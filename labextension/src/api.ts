/** Calls of the mlp service through this notebook server's forwarding handlers. */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { errorFromResponse, MLPError } from './model';

const settings = () => ServerConnection.makeSettings();

export function apiUrl(path: string): string {
  return URLExt.join(settings().baseUrl, 'mlp', 'panel', 'api', path);
}

/** One call; resolves with the JSON answer, rejects with an MLPError in the service's words. */
export async function requestAPI<T = any>(
  path: string,
  init: RequestInit = {},
  signal?: AbortSignal
): Promise<T> {
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(apiUrl(path), { ...init, signal }, settings());
  } catch (e) {
    if ((e as Error)?.name === 'AbortError') {
      throw e;
    }
    throw new MLPError(
      0,
      'server_unreachable',
      `this notebook server does not answer (${String(e)}); the panel retries by itself`
    );
  }
  const text = await response.text();
  if (!response.ok) {
    throw errorFromResponse(response.status, text);
  }
  return (text ? JSON.parse(text) : {}) as T;
}

export function postJSON<T = any>(path: string, body: any, method = 'POST'): Promise<T> {
  return requestAPI<T>(path, { method, body: JSON.stringify(body) });
}

/** The raw streamed response of a followed log (server-sent events). */
export async function openStream(path: string, signal: AbortSignal): Promise<Response> {
  const response = await ServerConnection.makeRequest(
    apiUrl(path),
    { signal, headers: { Accept: 'text/event-stream' } },
    settings()
  );
  if (!response.ok) {
    throw errorFromResponse(response.status, await response.text());
  }
  return response;
}

/** Reads a notebook or file through the contents API (for "Train on the platform…"). */
export async function readContents(path: string): Promise<any> {
  const url = URLExt.join(settings().baseUrl, 'api', 'contents', URLExt.encodeParts(path));
  const response = await ServerConnection.makeRequest(url + '?content=1', {}, settings());
  if (!response.ok) {
    throw errorFromResponse(response.status, await response.text());
  }
  return response.json();
}
