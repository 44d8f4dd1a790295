// A site's producer for recaptcha-annotator, in Node.js with kafkajs.
//
// What a site does around reCAPTCHA Enterprise:
//   1. right after assessments.create, record which assessment a correlation key belongs to
//      (topic `assessments`, keyed by the correlation key);
//   2. when the truth is known, emit the outcome under the same key: a login that passed two
//      factors (topic `logins`), and weeks later a chargeback (topic `fraud-signals`).
// The service joins the outcome to the assessment through the key and annotates it.
//
// Run against the local stack (scripts/kafka.sh, `recaptcha-annotator sandbox`):
//   node producer.js --brokers 127.0.0.1:9092 --endpoint http://127.0.0.1:8085 \
//       --project 123456789 --api-key local-key
// The contract is docs/EVENTS.md; `recaptcha-annotator validate` checks what this wrote.
'use strict';

const { randomUUID } = require('node:crypto');
const { parseArgs } = require('node:util');
const { Kafka, Partitioners, logLevel } = require('kafkajs');

const { values: args } = parseArgs({
  options: {
    brokers: { type: 'string', default: '127.0.0.1:9092' },
    endpoint: { type: 'string', default: 'http://127.0.0.1:8085' },
    project: { type: 'string', default: '123456789' },
    'api-key': { type: 'string', default: 'local-key' },
    'assessments-topic': { type: 'string', default: 'assessments' },
    'logins-topic': { type: 'string', default: 'logins' },
    'fraud-signals-topic': { type: 'string', default: 'fraud-signals' },
    count: { type: 'string', default: '3' },
    // Idempotence is on by default (Apache Kafka takes kafkajs's InitProducerId); this
    // turns it off for a broker that refuses it.
    'no-idempotence': { type: 'boolean', default: false },
  },
});

// RFC 3339 in UTC, as the contract reads timestamps.
const now = () => new Date().toISOString();

// assessments.create, as the site's backend calls it; returns the assessment's name.
async function createAssessment() {
  const response = await fetch(`${args.endpoint}/v1/projects/${args.project}/assessments`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'x-goog-api-key': args['api-key'] },
    body: JSON.stringify({ event: { token: 'sample-token', siteKey: 'sample-site-key' } }),
  });
  if (!response.ok) throw new Error(`assessments.create: HTTP ${response.status}`);
  return (await response.json()).name;
}

async function main() {
  const kafka = new Kafka({
    clientId: 'sample-producer',
    brokers: args.brokers.split(','),
    logLevel: logLevel.WARN,
  });
  // Idempotent: a retried send is never a duplicate (kafkajs needs one request in flight).
  // Without it a retry may repeat an event; the service drops a repeat of an event_id it
  // already annotated, but idempotence is the first line.
  const producer = kafka.producer({
    idempotent: !args['no-idempotence'],
    maxInFlightRequests: 1,
    createPartitioner: Partitioners.DefaultPartitioner,
  });
  await producer.connect();
  const send = (topic, key, event) =>
    producer.send({ topic, acks: -1, messages: [{ key, value: JSON.stringify(event) }] });
  const count = Number(args.count);
  for (let i = 0; i < count; i++) {
    // 1. Right after assessments.create: the correlation key -> the assessment.
    const name = await createAssessment();
    const key = `login-${randomUUID().slice(0, 12)}`;
    await send(args['assessments-topic'], key, { key, assessment: name, created_at: now() });
    // 2. The login's outcome, under the same key: two factors passed.
    await send(args['logins-topic'], key, {
      event_id: `js-${randomUUID()}`, outcome: 'two_factor_passed', occurred_at: now(),
      key, account_id: 'u-42',
    });
    // 3. Weeks later, a chargeback for the payment made in that session.
    await send(args['fraud-signals-topic'], key, {
      event_id: `js-${randomUUID()}`, outcome: 'chargeback', occurred_at: now(), key,
      account_id: 'u-42',
      transaction: { event_type: 'CHARGEBACK', reason: '6005', value: 12.5, event_time: now() },
    });
  }
  await producer.disconnect();
  console.log(`node sample: ${count} assessments, ${2 * count} outcomes delivered`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
