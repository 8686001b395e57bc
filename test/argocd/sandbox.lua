-- Runs an Argo CD health script over sample objects in a sandbox shaped like Argo CD's
-- gopher-lua: base functions, table, os.time/os.date — no string, no math, no io, no require,
-- and no string methods (the string metatable's __index is cleared while the script runs).
-- Usage: lua5.1 sandbox.lua SCRIPT SAMPLES_JSON ; prints one JSON result per sample.
local json = require("dkjson")

local scriptPath, samplesPath = arg[1], arg[2]
local scriptFile = assert(io.open(scriptPath, "r"))
local source = scriptFile:read("*a")
scriptFile:close()
local samplesFile = assert(io.open(samplesPath, "r"))
local samples = assert(json.decode(samplesFile:read("*a")))
samplesFile:close()

local base = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "print", "rawequal", "rawget", "rawset",
  "select", "tonumber", "tostring", "type", "unpack", "xpcall", "getmetatable", "setmetatable",
}

local stringMeta = getmetatable("")
local encode = json.encode

for _, sample in ipairs(samples) do
  local env = {}
  for _, name in ipairs(base) do
    env[name] = _G[name]
  end
  env.table = { insert = table.insert, remove = table.remove, concat = table.concat, sort = table.sort, getn = table.getn }
  env.os = { time = os.time, date = os.date }
  env._G = env
  env.obj = sample.object
  local chunk = assert(loadstring(source, "health.lua"))
  setfenv(chunk, env)
  local savedIndex = stringMeta.__index
  stringMeta.__index = nil
  local ok, result = pcall(chunk)
  stringMeta.__index = savedIndex
  if ok then
    io.write(encode({ name = sample.name, status = result and result.status, message = result and result.message }), "\n")
  else
    io.write(encode({ name = sample.name, error = tostring(result) }), "\n")
  end
end
