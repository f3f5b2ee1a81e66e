-- wrk script: POST /payments/authorize, alternating merchants so both
-- shards take writes. PAYFN_KEYS: comma-separated API keys.
local keys = {}
for key in string.gmatch(os.getenv("PAYFN_KEYS") or "", "[^,]+") do
  table.insert(keys, key)
end
local n = 0

request = function()
  n = n + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. keys[(n % #keys) + 1],
  }
  return wrk.format("POST", "/payments/authorize", headers, '{"amount":15000,"currency":"KRW","orderId":"bench"}')
end

response = function(status)
  if status ~= 201 then
    error("unexpected status " .. status)
  end
end
