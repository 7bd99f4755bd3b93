// Shared by the k6 scripts: the target, the request bodies (held-out test data
// from the models' golden files) and the run profile.
//
// Environment:
//   BASE_URL     target, default http://127.0.0.1:8080 (nginx in docker-compose)
//   MODELS_DIR   where the golden files are, relative to this script or absolute;
//                default ../models (the repository, or /models in the k6 container)
//   K6_PROFILE   full (default): the durations of the reference tests;
//                smoke: the same shape in a few seconds, for CI
import http from 'k6/http';

export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const MODELS_DIR = __ENV.MODELS_DIR || '../models';
export const SMOKE = (__ENV.K6_PROFILE || 'full') === 'smoke';

// Held-out cases the training scripts wrote next to each model: real SpamAssassin
// messages and real Mauna Loa CO2 windows, never seen in training.
const TEXT = JSON.parse(open(`${MODELS_DIR}/text-classifier/1/golden.json`)).cases.map((c) => c.input);
const LSTM = JSON.parse(open(`${MODELS_DIR}/lstm-forecaster/1/golden.json`)).cases.map((c) => c.input);

const PARAMS = { headers: { 'Content-Type': 'application/json' } };

export function pick(list) {
  return list[Math.floor(Math.random() * list.length)];
}

/// A text request. With probability `repeat` it is one of the held-out messages
/// verbatim (a repeat: a cache hit once seen); otherwise the same kind of message
/// made unique by a trailer, as a message the service has never seen (a miss).
export function textBody(repeat) {
  let message = pick(TEXT);
  if (Math.random() >= repeat) {
    message += `\n\n-- ${__VU}.${__ITER}.${Date.now()}.${Math.random()}`;
  }
  return JSON.stringify({ model: 'text-classifier', instances: [message] });
}

/// An LSTM request: a held-out 26-week CO2 window. With probability `repeat` it is
/// sent as is; otherwise its level is shifted by a random offset within +-5 ppm, a
/// window of the same shape the cache has not seen (the model forecasts the change
/// from the last reading, so the forecast shifts with it).
export function lstmBody(repeat) {
  let window = pick(LSTM);
  if (Math.random() >= repeat) {
    const offset = (Math.random() - 0.5) * 10;
    window = window.map((row) => row.map((v) => v + offset));
  }
  return JSON.stringify({ model: 'lstm-forecaster', instances: [window] });
}

export function predict(body, tags) {
  return http.post(`${BASE_URL}/predict`, body, Object.assign({ tags }, PARAMS));
}

/// Seconds in the full profile, or a short stand-in in the smoke profile.
export function dur(fullSeconds, smokeSeconds) {
  return `${SMOKE ? smokeSeconds : fullSeconds}s`;
}

export function num(name, fallback) {
  const v = __ENV[name];
  return v === undefined || v === '' ? fallback : Number(v);
}
