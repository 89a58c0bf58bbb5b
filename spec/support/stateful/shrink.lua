-- A delta minimizer of op lists: drops chunks of ops (halves, quarters, ... single
-- ops) while the run still fails with the same class of failure. Bounded by
-- `max_runs` and `seconds` (the mock backend runs in real time; a failure that
-- depends on timing may not come back on every run, so the result is the smallest
-- list seen failing, not a proof of minimality).
local M = {}

function M.shrink(ops, still_fails, max_runs, seconds, clock)
  local best, runs = ops, 0
  local deadline = clock() + seconds
  local chunk = math.floor(#best / 2)
  while chunk >= 1 do
    local i, progressed = 1, false
    while i <= #best do
      if runs >= max_runs or clock() > deadline then return best, runs end
      local cand = {}
      for j, op in ipairs(best) do
        if j < i or j >= i + chunk then cand[#cand + 1] = op end
      end
      runs = runs + 1
      if #cand > 0 and still_fails(cand) then
        best, progressed = cand, true
      else
        i = i + chunk
      end
    end
    if not progressed then chunk = math.floor(chunk / 2) end
  end
  return best, runs
end

return M
