-- wrk script: GET /payments/{id}. PAYFN_KEY: the owner's key; PAYFN_PAYMENT: the id.
local path = "/payments/" .. os.getenv("PAYFN_PAYMENT")
local headers = { ["Authorization"] = "Bearer " .. os.getenv("PAYFN_KEY") }

request = function()
  return wrk.format("GET", path, headers)
end
