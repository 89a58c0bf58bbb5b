-- luacheck: globals love
-- LÖVE 11.4 configuration for the lua-kie example: a small window, and none of
-- the modules the example does not use (no audio device is needed, so it runs
-- under xvfb-run on a headless machine).
function love.conf(t)
  t.identity = "lua-kie-example"
  t.version = "11.4"
  t.console = false
  t.window.title = "lua-kie: 100 image jobs, never blocking a frame"
  t.window.width = 640
  t.window.height = 200
  t.window.vsync = 1
  t.modules.audio = false
  t.modules.sound = false
  t.modules.joystick = false
  t.modules.physics = false
  t.modules.video = false
  t.modules.touch = false
end
