// The text-classifier reference test (shared/seeds/003): 50 virtual users for
// 5 minutes against nginx and the workers, with repeated messages so the shared
// cache is exercised. The reference platform: ~170 req/s, p95 140 ms, cache hit
// rate ~65%.
//
//   k6 run k6/text-cache.js                            # 50 VUs, 5 min
//   K6_PROFILE=smoke k6 run k6/text-cache.js           # 50 VUs, 5 s
//
// TEXT_REPEAT (default 0.65): share of requests that resend a message already
// seen, which is the hit rate to expect once the 32 held-out messages are cached.
// VUS and DURATION_S override the 50 users and the duration.
import { check } from 'k6';
import { Rate } from 'k6/metrics';
import { textBody, predict, dur, num } from './lib.js';

const REPEAT = num('TEXT_REPEAT', 0.65);
const cacheHits = new Rate('cache_hits');

export const options = {
  scenarios: {
    baseline: {
      executor: 'constant-vus',
      vus: num('VUS', 50),
      duration: __ENV.DURATION_S ? `${__ENV.DURATION_S}s` : dur(300, 5),
      gracefulStop: '5s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    http_req_duration: [`p(95)<${num('P95_MS', 100)}`, `p(99)<${num('P99_MS', 250)}`],
    checks: ['rate>0.999'],
    // The realised hit rate cannot exceed the repeat rate; it should get close.
    cache_hits: [`rate>${Math.max(0, REPEAT - 0.15)}`],
  },
};

export default function () {
  const res = predict(textBody(REPEAT), { model: 'text-classifier' });
  const ok = check(res, {
    'status 200': (r) => r.status === 200,
    'a label': (r) => r.status === 200 && ['ham', 'spam'].includes(r.json('predictions.0.label')),
  });
  if (ok) cacheHits.add(res.json('cached.0') === true);
}
