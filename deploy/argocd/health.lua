-- Argo CD health check for mpusweeper.io/MultipartCleanup. It reads the kstatus conditions the
-- controller writes (Ready, Reconciling, Stalled):
--   Healthy      Ready=True, or a sweep is running and the previous one succeeded
--   Degraded     Stalled=True (only a spec or Secret change helps), or the last run failed and
--                is being retried (endpoint down, aborts failed...)
--   Suspended    spec.suspend is true
--   Progressing  no status yet, status for an older generation, or the first sweep is running
local hs = { status = "Progressing", message = "Waiting for the mpu-sweeper controller" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "Waiting for the controller to observe generation " .. generation
  return hs
end

local conditions = {}
for _, condition in ipairs(obj.status.conditions) do
  conditions[condition.type] = condition
end
local ready, stalled, reconciling = conditions["Ready"], conditions["Stalled"], conditions["Reconciling"]

if stalled ~= nil and stalled.status == "True" then
  return { status = "Degraded", message = stalled.message or stalled.reason }
end
if ready ~= nil and ready.status == "True" then
  return { status = "Healthy", message = ready.message }
end
if ready ~= nil and ready.reason == "Suspended" then
  return { status = "Suspended", message = ready.message }
end
if reconciling ~= nil and reconciling.status == "True" then
  -- A scheduled sweep of a healthy resource must not flap it to Progressing every time it runs.
  local run = obj.status.lastRun
  local succeeded = obj.status.lastSuccessfulRunTime
  if run ~= nil and succeeded ~= nil and run.completionTime == succeeded then
    return { status = "Healthy", message = reconciling.message .. "; the previous sweep succeeded" }
  end
  return { status = "Progressing", message = reconciling.message }
end
if ready ~= nil and ready.status == "False" then
  return { status = "Degraded", message = ready.message or ready.reason }
end
return hs
