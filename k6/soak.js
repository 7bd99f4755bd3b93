// Soak: a steady arrival rate (default 300 req/s, both models, mixed cache hits)
// for an hour, to surface leaks, log-writer backlog and latency drift.
//
//   k6 run k6/soak.js                                  # 1 hour
//   SOAK_MINUTES=480 k6 run k6/soak.js                 # 8 hours
//   K6_PROFILE=smoke k6 run k6/soak.js                 # 5 s at 50 req/s
//
// An open-loop (arrival-rate) executor: a slow server does not slow the load down,
// so latency drift shows up instead of hiding as lower throughput.
import { check } from 'k6';
import { lstmBody, textBody, predict, num, SMOKE } from './lib.js';

const RATE = num('SOAK_RATE', SMOKE ? 50 : 300);
const MINUTES = num('SOAK_MINUTES', 60);

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: SMOKE ? '5s' : `${MINUTES}m`,
      preAllocatedVUs: Math.max(10, RATE / 10),
      maxVUs: Math.max(50, RATE),
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.0001'],
    http_req_duration: [`p(95)<${num('P95_MS', 50)}`, `p(99)<${num('P99_MS', 150)}`],
    dropped_iterations: [`count<${Math.ceil(RATE)}`],
    checks: ['rate>0.9999'],
  },
};

export default function () {
  const body = Math.random() < 0.5 ? lstmBody(0.3) : textBody(0.65);
  const res = predict(body, {});
  check(res, { 'status 200': (r) => r.status === 200 });
}
