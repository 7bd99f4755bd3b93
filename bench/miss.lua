-- wrk script: every request carries a text no earlier request had (cache misses).
-- Each wrk thread gets its own prefix so threads never collide.
-- `prefix` is a global on purpose: setup() sets it in each thread's own state.
counter = 0
local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("prefix", tostring(next_id) .. "-" .. tostring(os.time()))
end
function request()
  counter = counter + 1
  local body = '{"model":"text-classifier","instances":["Subject: load ' .. prefix .. '-' .. counter ..
    '\\n\\nHello, this message differs from every other one by its number, so it always misses the cache."]}'
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, body)
end
