// Independent-client contract test (issue 9): a Node.js client built only from proto/ with @grpc/grpc-js and
// @grpc/proto-loader, sharing no code with the Python client, talks to a live idcheck server.
//
// Usage: IDCHECK_ADDRESS=127.0.0.1:PORT node client.test.mjs
// (started by tests/node/test_node_client.py against a fresh server on an empty register).
// Uses node's built-in test runner: any failed assertion makes the process exit non-zero.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_PROTO = path.resolve(HERE, '..', '..', 'proto');
const LOCAL_PROTO = path.join(HERE, 'proto');
const ADDRESS = process.env.IDCHECK_ADDRESS;
const DIMENSION = 512;
const DEADLINE_MS = 10_000;

if (!ADDRESS) {
  console.error('IDCHECK_ADDRESS is not set (host:port of a running idcheck server)');
  process.exit(2);
}

const LOADER_OPTIONS = {
  keepCase: true, // field names exactly as in the .proto files
  enums: String,
  longs: Number,
  bytes: Buffer,
  defaults: true,
  oneofs: true,
  includeDirs: [REPO_PROTO, LOCAL_PROTO],
};

const definition = protoLoader.loadSync(
  ['idcheck/v1/register.proto', 'idcheck/v1/biometrics.proto', 'grpc/health/v1/health.proto', 'local/rpc_status.proto'],
  LOADER_OPTIONS,
);
const loaded = grpc.loadPackageDefinition(definition);
const { DocumentRegister, Biometrics } = loaded.idcheck.v1;
const { Health } = loaded.grpc.health.v1;
const decodeStatus = definition['idcheck_node_test.Decoder'].DecodeStatus.responseDeserialize;
const decodeBadRequest = definition['idcheck_node_test.Decoder'].DecodeBadRequest.responseDeserialize;

const credentials = grpc.credentials.createInsecure();
let health;
let register;
let biometrics;

function identity(member, role) {
  const md = new grpc.Metadata();
  md.set('x-idcheck-member', member);
  md.set('x-idcheck-role', role);
  return md;
}

function deadline() {
  return { deadline: new Date(Date.now() + DEADLINE_MS) };
}

// Unary call as a promise; rejects with the grpc-js ServiceError (code, details, metadata = trailers).
function unary(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, deadline(), (err, response) => (err ? reject(err) : resolve(response)));
  });
}

// Client-streaming UploadRecords: header, then the batches, then the end message with the row count.
function upload(metadata, header, batches) {
  return new Promise((resolve, reject) => {
    const call = register.UploadRecords(metadata, deadline(), (err, response) => (err ? reject(err) : resolve(response)));
    call.write({ header });
    let rows = 0;
    for (const records of batches) {
      call.write({ batch: { records } });
      rows += records.length;
    }
    call.write({ end: { total_rows: rows } });
    call.end();
  });
}

function record(number, status, extra = {}) {
  return {
    key: { issuing_state: 'NZL', document_number: number, document_class: 'DOCUMENT_CLASS_PASSPORT' },
    status,
    event_date: '2025-01-15',
    ...extra,
  };
}

function typed(state, number, client_reference = '') {
  return { typed: { issuing_state: state, document_number: number }, client_reference };
}

// A deterministic pseudo-random unit vector, packed as little-endian float32 bytes.
function faceVector(seed) {
  const values = new Float32Array(DIMENSION);
  let x = seed >>> 0 || 1;
  let norm = 0;
  for (let i = 0; i < DIMENSION; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    values[i] = x / 0xffffffff - 0.5;
    norm += values[i] * values[i];
  }
  norm = Math.sqrt(norm);
  for (let i = 0; i < DIMENSION; i++) values[i] /= norm;
  const bytes = Buffer.alloc(4 * DIMENSION);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  values.forEach((v, i) => view.setFloat32(4 * i, v, true)); // little-endian whatever the host
  return { dimension: DIMENSION, data: bytes };
}

before(() => {
  health = new Health(ADDRESS, credentials);
  register = new DocumentRegister(ADDRESS, credentials);
  biometrics = new Biometrics(ADDRESS, credentials);
});

after(() => {
  for (const client of [health, register, biometrics]) client?.close();
});

test('health: the server reports SERVING', async () => {
  const response = await unary(health, 'Check', { service: '' });
  assert.equal(response.status, 'SERVING');
});

test('upload: header, one batch of 3 records, end -> 3 created', async () => {
  const response = await upload(
    identity('NZL', 'member'),
    { upload_id: 'node-client-1', mode: 'UPLOAD_MODE_INCREMENTAL', description: 'node contract test' },
    [
      [
        record('LA123456', 'RECORD_STATUS_STOLEN', {
          instructions: 'Seize document, contact NCB Wellington',
          holder: { surname: 'SMITH', birth_date: '1980-02-03' },
        }),
        record('LB654321', 'RECORD_STATUS_LOST'),
        record('RA0OO1', 'RECORD_STATUS_REVOKED'),
      ],
    ],
  );
  assert.equal(response.upload_id, 'node-client-1');
  assert.deepEqual(
    [response.received, response.accepted, response.rejected, response.created, response.replayed],
    [3, 3, 0, 3, false],
  );
  assert.deepEqual(response.rejected_rows, []);
  assert.ok(response.register_sequence >= 3);
});

test('check: typed query of a listed document is a HIT with an EXACT match owned by NZL', async () => {
  const response = await unary(register, 'CheckDocument', { query: typed('nzl', 'LA 123-456', 'typed-1') }, identity('FJI', 'border'));
  const { result } = response;
  assert.equal(result.verdict, 'VERDICT_HIT');
  assert.equal(result.client_reference, 'typed-1');
  assert.equal(result.matches.length, 1);
  const [match] = result.matches;
  assert.equal(match.kind, 'MATCH_KIND_EXACT');
  assert.equal(match.owner_member, 'NZL');
  assert.equal(match.status, 'RECORD_STATUS_STOLEN');
  assert.equal(match.key.document_number, 'LA123456');
  assert.equal(match.instructions, 'Seize document, contact NCB Wellington');
  assert.equal(match.holder.surname, 'SMITH');
  assert.deepEqual([result.searched_key.issuing_state, result.searched_key.document_number], ['NZL', 'LA123456']);
  assert.ok(result.query_id.length > 0);
  assert.ok(response.register_sequence >= 3);
});

test('check: an OCR variant of a listed number is a POSSIBLE_MATCH, never a HIT', async () => {
  const { result } = await unary(register, 'CheckDocument', { query: typed('NZL', 'LA12345G') }, identity('FJI', 'border'));
  assert.equal(result.verdict, 'VERDICT_POSSIBLE_MATCH');
  assert.deepEqual(result.matches.map((m) => m.kind), ['MATCH_KIND_OCR_VARIANT']);
  assert.equal(result.matches[0].key.document_number, 'LA123456');
});

test('check: a bad issuing state is INVALID_ARGUMENT with a rich status trailer naming the field', async () => {
  const err = await unary(register, 'CheckDocument', { query: typed('ZZZ', 'A1234567') }, identity('NZL', 'border')).then(
    () => assert.fail('expected INVALID_ARGUMENT'),
    (e) => e,
  );
  assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  assert.equal(err.code, 3);
  const [raw] = err.metadata.get('grpc-status-details-bin');
  assert.ok(Buffer.isBuffer(raw) && raw.length > 0, 'grpc-status-details-bin trailer missing');
  const status = decodeStatus(raw);
  assert.equal(status.code, 3);
  assert.equal(status.message, err.details);
  const badRequest = status.details.find((d) => d.type_url.endsWith('/google.rpc.BadRequest'));
  assert.ok(badRequest, `no BadRequest detail in ${JSON.stringify(status.details.map((d) => d.type_url))}`);
  const violations = decodeBadRequest(badRequest.value).field_violations;
  assert.deepEqual(violations.map((v) => v.field), ['query.typed.issuing_state']);
});

test('manifest: CheckDocuments answers in order and echoes client references', async () => {
  const response = await unary(
    register,
    'CheckDocuments',
    { queries: [typed('NZL', 'LB654321', 'pax-0'), typed('NZL', 'X1', 'pax-1'), typed('NZL', 'LA12345G', 'pax-2')] },
    identity('FJI', 'border'),
  );
  assert.deepEqual(response.results.map((r) => r.client_reference), ['pax-0', 'pax-1', 'pax-2']);
  assert.deepEqual(
    response.results.map((r) => r.verdict),
    ['VERDICT_HIT', 'VERDICT_CLEAR', 'VERDICT_POSSIBLE_MATCH'],
  );
  assert.equal(response.results[0].matches[0].status, 'RECORD_STATUS_LOST');
  assert.deepEqual([response.hits, response.possible_matches, response.clear], [1, 1, 1]);
  assert.equal(new Set(response.results.map((r) => r.query_id)).size, 3);
});

const SUBJECT = 'NZL-NODE-0001';
const OTHER_SUBJECT = 'NZL-NODE-0002';
const FACE = faceVector(20250115);
const OTHER_FACE = faceVector(7);

test('enrol: one 512-d template per subject (float32 LE, normalised) -> created', async () => {
  const response = await unary(
    biometrics,
    'EnrolTemplates',
    {
      templates: [
        {
          subject_id: SUBJECT,
          modality: 'MODALITY_FACE',
          vector: FACE,
          quality: 0.9,
          documents: [{ issuing_state: 'NZL', document_number: 'LA123456' }],
        },
        { subject_id: OTHER_SUBJECT, modality: 'MODALITY_FACE', vector: OTHER_FACE },
      ],
    },
    identity('NZL', 'member'),
  );
  assert.equal(response.template_ids.length, 2);
  assert.ok(response.template_ids.every((id) => id > 0));
  assert.equal(response.subjects_created, 2);
  assert.ok(response.template_sequence >= 1);
});

test('verify: the same vector against the subject is a MATCH', async () => {
  const response = await unary(
    biometrics,
    'Verify',
    { subject_id: SUBJECT, modality: 'MODALITY_FACE', probe: FACE },
    identity('FJI', 'border'),
  );
  assert.equal(response.decision, 'DECISION_MATCH');
  assert.equal(response.subject_id, SUBJECT);
  assert.ok(Math.abs(response.score - 1) < 1e-4, `score ${response.score}`);
  assert.ok(response.score >= response.operating_point.threshold);
  assert.equal(response.operating_point.rate_kind, 'FMR');
  assert.equal(response.templates_compared, 1);
  // the same claim by linked document
  const byDocument = await unary(
    biometrics,
    'Verify',
    { document: { issuing_state: 'NZL', document_number: 'LA-123456' }, modality: 'MODALITY_FACE', probe: FACE },
    identity('FJI', 'border'),
  );
  assert.equal(byDocument.decision, 'DECISION_MATCH');
  assert.equal(byDocument.subject_id, SUBJECT);
  // another face against the subject is not a match
  const other = await unary(
    biometrics,
    'Verify',
    { subject_id: SUBJECT, modality: 'MODALITY_FACE', probe: OTHER_FACE },
    identity('FJI', 'border'),
  );
  assert.equal(other.decision, 'DECISION_NO_MATCH');
});

test('identify: the enrolled subject comes first', async () => {
  const response = await unary(
    biometrics,
    'Identify',
    { modality: 'MODALITY_FACE', probe: FACE, max_candidates: 5 },
    identity('FJI', 'border'),
  );
  assert.ok(response.candidates.length >= 1, 'no candidates');
  const [first] = response.candidates;
  assert.equal(first.subject_id, SUBJECT);
  assert.equal(first.rank, 1);
  assert.equal(first.owner_member, 'NZL');
  assert.ok(Math.abs(first.score - 1) < 1e-4, `score ${first.score}`);
  assert.deepEqual(first.documents.map((d) => d.document_number), ['LA123456']);
  assert.equal(response.gallery_size, 2);
  assert.equal(response.operating_point.rate_kind, 'FPIR');
});
