-- examples/love: the LÖVE 11.4 game runs 100 slow kie.ai jobs (against the mock
-- that examples/love/run.sh starts) from love.update under xvfb-run, and quits by
-- itself. Every job must complete. Frame timings are printed, never asserted.

local run = require("spec.support.util").run

local function have(cmd)
  return (run("command -v " .. cmd))
end

describe("examples/love (LÖVE under xvfb-run) #examples", function()
  it("completes every job and quits by itself", function()
    if not have("love") or not have("xvfb-run") then
      return pending("love and xvfb-run are not installed (apt-get install love xvfb)")
    end
    local ok, out, rc = run("KIE_XVFB=1 KIE_TASKS=100 KIE_MAX_FRAMES=3600 "
      .. (have("timeout") and "timeout 300 " or "") .. "sh examples/love/run.sh")
    local line = out:match("(frames=[^\n]*)")
    io.stderr:write("\n# love: ", tostring(line), "\n")
    assert.is_true(ok, "run.sh exited with " .. tostring(rc) .. ":\n" .. out)
    assert.is_string(line, "no figures line:\n" .. out)
    local f = {}
    for k, v in line:gmatch("(%w[%w_]*)=(%S+)") do f[k] = tonumber(v) or v end
    assert.equals(100, f.tasks)
    assert.equals(100, f.completed)
    assert.equals(0, f.failed)
    assert.is_true(f.frames > 0)
    assert.matches("100 creates", out) -- what the mock served
  end)
end)
