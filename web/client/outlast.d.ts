// outlast.d.ts: TypeScript definitions of Outlast's browser client (/client/outlast.js).

export type ConnectionState = "connecting" | "open" | "reconnecting" | "sse" | "polling" | "offline" | "unauthorized";
export type Preset = "eco" | "standard" | "high" | "original";

export interface OutlastOptions {
  /** Gateway base URL; default: this page's origin. */
  url?: string;
  /** Bearer token (sent only as `Authorization`; WebSocket and EventSource get a single-use ticket from `POST /v1/tickets`). */
  token?: string;
  /** No `welcome` within this after opening a socket: give up on it (default 5000). */
  connectTimeoutMs?: number;
  /** Reconnect backoff bounds, full jitter (default 500 / 20000, the protocol crate's). */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** Consecutive WebSocket failures before falling back to SSE (default 3). */
  wsFailuresBeforeFallback?: number;
  /** While on a fallback, try the WebSocket again this often (default 30000). */
  wsRetryMs?: number;
  /** SSE streams failing without data this often: long-poll instead (default 3). */
  sseFailuresBeforePoll?: number;
  /** No upload acknowledgement for this long: reconnect the upload (default 30000). */
  uploadStallMs?: number;
  /** WebSocket uploads keep about this many ms of data (at the acknowledged rate) in flight, so control messages never wait longer behind chunks (default 1000). */
  uploadPaceMs?: number;
  /** Which WebAssembly build prepares images (default "auto": SIMD when supported). */
  wasm?: "auto" | "simd" | "nosimd";
  /** IndexedDB database name (default "outlast"). */
  storeName?: string;
}

export interface UploadProgress {
  /** Bytes the server acknowledged as durable. */
  sent: number;
  total: number;
  /** Bytes per second, smoothed. */
  rate: number;
}

export interface PreparedInfo {
  size: number;
  type: string;
  width?: number;
  height?: number;
  /** "simd" | "nosimd" | "canvas"; undefined when the file was not an image or "original". */
  variant?: string;
  /** True when the original is sent (preparing would not have made it smaller). */
  kept: boolean;
}

export interface JobEvent {
  job_id: string;
  seq: number;
  at_ms: number;
  type: "queued" | "started" | "progress" | "preview" | "output" | "completed" | "failed" | "canceled";
  position?: number;
  reason?: string;
  attempt?: number;
  value?: number;
  max?: number;
  label?: string;
  mime?: string;
  /** preview: base64 image data. */
  data?: string;
  name?: string;
  size?: number;
  sha256?: string;
  /** output: its download URL (added by the client). */
  url?: string;
  cached?: boolean;
  code?: string;
  message?: string;
  detail?: unknown;
  [field: string]: unknown;
}

export interface OutputInfo {
  name: string;
  mime: string;
  size: number;
  sha256: string;
  /** Download URL (added by the client). */
  url: string;
}

export interface Snapshot {
  job_id: string;
  backend: string;
  state: "queued" | "running" | "completed" | "failed" | "canceled";
  seq: number;
  created_at_ms: number;
  updated_at_ms: number;
  attempt: number;
  /** While queued: the live queue position. */
  position?: number;
  /** While queued: why it waits, if something holds it. */
  queue_reason?: string;
  progress?: { value: number; max: number; label?: string };
  outputs: OutputInfo[];
  cached: boolean;
  error?: { code: string; message: string; detail?: unknown };
  cancel_reason?: string;
}

export interface JobSpec {
  backend: string;
  workflow?: unknown;
  /** Values: upload ids, or Upload handles (submitted as their id). */
  inputs?: Record<string, string | Upload>;
  idempotency_key?: string;
  cache?: boolean;
  retries?: number;
}

export interface SubmitOptions {
  /** Submit as soon as the named uploads exist, before their bytes are in (default true). */
  early?: boolean;
}

export class Upload extends EventTarget {
  readonly name: string;
  readonly preset: Preset;
  readonly original: { size: number; type: string; name: string } | null;
  readonly prepared: PreparedInfo | null;
  /** sha256 (hex) of the bytes sent. */
  readonly hash: string | null;
  readonly id: string | null;
  readonly offset: number;
  readonly total: number;
  readonly rate: number;
  readonly state: "preparing" | "uploading" | "complete" | "failed" | "canceled";
  /** True for handles made by restore(). */
  readonly restored?: boolean;
  /** The upload id once every byte is stored. */
  readonly done: Promise<string>;
  /** The upload id as soon as the server created the upload. */
  readonly created: Promise<string>;
  cancel(): void;
  addEventListener(type: "progress", listener: (e: CustomEvent<UploadProgress>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: "prepared", listener: (e: CustomEvent<{ original: Upload["original"]; prepared: PreparedInfo }>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: "done", listener: (e: CustomEvent<{ uploadId: string }>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: "error", listener: (e: CustomEvent<{ error: Error }>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

export class Job extends EventTarget {
  readonly key: string;
  readonly spec: JobSpec;
  readonly id: string | null;
  readonly state: string;
  readonly lastSeq: number;
  readonly snapshot: Snapshot | null;
  /** While queued: jobs ahead of it (0 = next), live; null otherwise. */
  readonly position: number | null;
  /** While queued: why it waits (an input still uploading, no server reachable, ...), or null. */
  readonly reason: string | null;
  readonly restored?: boolean;
  /** The final snapshot (any terminal state; check `state`), with output URLs. */
  readonly done: Promise<Snapshot>;
  cancel(): Promise<unknown>;
  addEventListener(type: "event", listener: (e: CustomEvent<JobEvent>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: "snapshot", listener: (e: CustomEvent<Snapshot>) => void, options?: boolean | AddEventListenerOptions): void;
  /** The queue place changed (stored `queued` event, live `position` message, snapshot or long-poll answer). */
  addEventListener(type: "position", listener: (e: CustomEvent<QueuePlace & { jobId: string }>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: "submitted", listener: (e: CustomEvent<{ jobId: string; created: boolean }>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: "done", listener: (e: CustomEvent<Snapshot>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: "error", listener: (e: CustomEvent<{ error: Error }>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

export class Outlast extends EventTarget {
  constructor(options?: OutlastOptions);
  readonly state: ConnectionState | null;
  readonly mode: "ws" | "sse" | "poll";
  upload(file: Blob | File, options?: { prepare?: Preset; name?: string }): Upload;
  submit(spec: JobSpec, options?: SubmitOptions): Job;
  restore(): Promise<{ uploads: Upload[]; jobs: Job[] }>;
  getJob(jobId: string): Promise<Snapshot>;
  cancel(jobId: string): Promise<unknown>;
  outputUrl(jobId: string, name: string): string;
  /** Replaces the token; an open WebSocket is refreshed in band (`refresh`), not reconnected. */
  setToken(token: string | null): void;
  wasmVariant(): Promise<"simd" | "nosimd">;
  dropConnection(): void;
  close(): void;
  addEventListener(type: "state", listener: (e: CustomEvent<{ state: ConnectionState; mode: string }>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: "log", listener: (e: CustomEvent<{ message: string; at: number }>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: "upload_progress", listener: (e: CustomEvent<{ upload_id: string; offset: number; length?: number; bytes_per_sec: number }>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

export class Backoff {
  constructor(minMs?: number, maxMs?: number);
  next(unitRandom?: number): number;
  reset(): void;
}
export class ChunkSizer {
  constructor(min: number, max: number, targetMs: number);
  next(): number;
  record(bytes: number, elapsedMs: number): void;
}
/** Unacknowledged bytes a WebSocket upload may have in flight: ~paceMs of data at the acknowledged rate, >= one chunk, <= maxWindow. */
export class AckPacer {
  constructor(paceMs?: number, maxWindow?: number, spanMs?: number);
  start(offset: number, nowMs: number, rate?: number): void;
  ack(offset: number, nowMs: number): void;
  rate(): number;
  window(chunk: number): number;
}
export interface QueuePlace {
  position: number;
  reason: string | null;
}
/** Queue places from every source; each method returns the new place, null (left the queue) or undefined (no change). */
export class QueuePlaces {
  get(jobId: string): QueuePlace | null;
  onEvent(event: JobEvent): QueuePlace | null | undefined;
  onPosition(message: { job_id: string; position: number; reason?: string | null }): QueuePlace | null | undefined;
  onSnapshot(snapshot: Snapshot): QueuePlace | null | undefined;
}
export class StreamTracker {
  lastSeq(jobId: string): number;
  set(jobId: string, seq: number): void;
  accept(event: { job_id: string; seq: number }): boolean;
  behind(heartbeatJobs: Record<string, number>): string[];
}
export class Store {
  constructor(name?: string, idb?: IDBFactory);
  put(store: "uploads" | "jobs", value: object): Promise<void>;
  get(store: "uploads" | "jobs", key: string): Promise<any>;
  all(store: "uploads" | "jobs"): Promise<any[]>;
  delete(store: "uploads" | "jobs", key: string): Promise<void>;
}
export class Sha256 {
  update(data: Uint8Array): this;
  hex(): string;
}
export function sha256Blob(blob: Blob): Promise<string>;
export function chunkHeader(uploadId: string, offset: number): Uint8Array;
export function tusMetadata(meta: Record<string, string>): string;
export function newKey(): string;
export function isPreparable(mimeType: string): boolean;
export default Outlast;
