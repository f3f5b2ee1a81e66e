-- wrk script: the seed's full flow per connection, one step after another:
-- authorize, capture in full, refund 5,000. PAYFN_KEYS: comma-separated API
-- keys (one merchant's key for a single busy merchant). Counts steps that
-- did not answer 2xx in `failed` (printed at the end, per thread).
-- wrk keeps one Lua state per *thread*, shared by its connections, so the
-- flow's step and payment id are per thread: run it with as many
-- connections as threads (`wrk -t8 -c8 ...`), or connections of one
-- thread capture each other's payments and most steps fail.
local keys = {}
for key in string.gmatch(os.getenv("PAYFN_KEYS") or "", "[^,]+") do
  table.insert(keys, key)
end
local threads = {}

setup = function(thread)
  table.insert(threads, thread)
end

init = function()
  step, payment, n, failed = 0, nil, 0, 0
end

request = function()
  local headers = { ["Content-Type"] = "application/json" }
  if step == 0 then
    n = n + 1
    key = keys[(n % #keys) + 1]
    headers["Authorization"] = "Bearer " .. key
    return wrk.format("POST", "/payments/authorize", headers, '{"amount":15000,"currency":"KRW"}')
  end
  headers["Authorization"] = "Bearer " .. key
  if step == 1 then
    return wrk.format("POST", "/payments/" .. payment .. "/capture", headers, "{}")
  end
  return wrk.format("POST", "/payments/" .. payment .. "/refund", headers, '{"amount":5000}')
end

response = function(status, headers, body)
  if status < 200 or status > 299 then
    failed = failed + 1
    step = 0
    return
  end
  if step == 0 then
    payment = string.match(body, '"id":"(pay_[^"]+)"')
    step = 1
  elseif step == 1 then
    step = 2
  else
    step = 0
  end
end

done = function()
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("failed")
  end
  io.write(string.format("steps not answered 2xx: %d\n", total))
end
