// The LSTM reference test (shared/seeds/001): progressive load of 10, 50 and 100
// concurrent users, each phase its own scenario so thresholds hold per phase.
// The reference service reached 16-21 req/s with p95 5.4 s at 100 users.
//
//   k6 run k6/lstm-progressive.js                      # 3 x 60 s
//   K6_PROFILE=smoke k6 run k6/lstm-progressive.js     # 3 x 3 s
//
// PHASE_S overrides the length of each phase.
// LSTM_REPEAT (default 0): share of requests that repeat a held-out window
// verbatim. At 0 every request is a cache miss, so this measures the model path.
import { check } from 'k6';
import { lstmBody, predict, dur, num, SMOKE } from './lib.js';

const REPEAT = num('LSTM_REPEAT', 0);
const P95_MS = num('P95_MS', 100);
const P99_MS = num('P99_MS', 250);
const phase = num('PHASE_S', SMOKE ? 3 : 60);

function stage(vus, start) {
  return { executor: 'constant-vus', vus, duration: dur(phase, phase), startTime: `${start}s`, gracefulStop: '5s' };
}

const scenarios = { users_10: stage(10, 0), users_50: stage(50, phase), users_100: stage(100, 2 * phase) };
const thresholds = { http_req_failed: ['rate<0.001'], checks: ['rate>0.999'] };
for (const name of Object.keys(scenarios)) {
  thresholds[`http_req_duration{scenario:${name}}`] = [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`];
}

export const options = { scenarios, thresholds, discardResponseBodies: false };

export default function () {
  const res = predict(lstmBody(REPEAT), { model: 'lstm-forecaster' });
  check(res, {
    'status 200': (r) => r.status === 200,
    'one forecast': (r) => r.status === 200 && r.json('predictions').length === 1,
  });
}
