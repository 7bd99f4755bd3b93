// Spike: from 10 to SPIKE_VUS (default 400) users in 10 s, held, then back. The
// service must shed what it cannot queue with 429 + Retry-After (never 5xx), and
// recover once the spike passes.
//
//   k6 run k6/spike.js                                 # about 2 minutes
//   K6_PROFILE=smoke k6 run k6/spike.js                # about 8 s
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { lstmBody, textBody, predict, num, SMOKE } from './lib.js';

const SPIKE = num('SPIKE_VUS', 400);
const shed = new Counter('shed_429');
const s = (full, smoke) => `${SMOKE ? smoke : full}s`;

// A 429 is the service working as designed under overload: not a failed request.
http.setResponseCallback(http.expectedStatuses(200, 429));

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-vus',
      startVUs: 10,
      stages: [
        { duration: s(20, 2), target: 10 },
        { duration: s(10, 1), target: SPIKE },
        { duration: s(60, 3), target: SPIKE },
        { duration: s(10, 1), target: 10 },
        { duration: s(20, 1), target: 10 },
      ],
      gracefulRampDown: '5s',
      gracefulStop: '5s',
    },
  },
  thresholds: {
    // Neither 5xx nor transport errors: overload answers 429 or succeeds.
    http_req_failed: ['rate<0.001'],
    checks: ['rate>0.999'],
    'http_req_duration{expected_response:true}': [`p(99)<${num('P99_MS', 2000)}`],
  },
};

export default function () {
  const body = Math.random() < 0.5 ? lstmBody(0) : textBody(0.5);
  const res = predict(body, {});
  if (res.status === 429) shed.add(1);
  check(res, {
    '200, or 429 with Retry-After': (r) =>
      r.status === 200 || (r.status === 429 && r.headers['Retry-After'] !== undefined),
    'JSON body': (r) => (r.headers['Content-Type'] || '').startsWith('application/json'),
  });
}
