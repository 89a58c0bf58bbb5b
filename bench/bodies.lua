-- The fixed job every benchmark row runs: the request a client sends to
-- createTask and the two answers the static nginx gives (kie-api.md §5.1, §6).
-- Plain Lua 5.1 - 5.4 (loaded with dofile by the driver and by the Lua clients).
local M = {}

M.API_KEY = "bench-key-0b5e9c"
M.TASK_ID = "task_ideogram_1765179922911"
M.CREATE_PATH = "/api/v1/jobs/createTask"
M.GET_PATH = "/api/v1/jobs/recordInfo?taskId=" .. M.TASK_ID
M.RESULT_URL = "https://tempfile.aiquickdraw.com/h/bench/ideogram_character_0.webp"

-- the published ideogram/character example body (prompt shortened)
function M.request()
  return {
    model = "ideogram/character",
    callBackUrl = "https://your-domain.com/api/callback",
    input = {
      prompt = "A fisherman mending nets on a pier at dawn, soft light, film grain",
      reference_image_urls = {
        "https://file.aiquickdraw.com/custom-page/akr/section-images/1755767145415pvz49dpi.webp",
      },
      rendering_speed = "BALANCED",
      style = "AUTO",
      expand_prompt = true,
      num_images = "1",
      image_size = "square_hd",
      negative_prompt = "blurry",
    },
  }
end

-- the request body as JSON text, for the clients that do not encode (curl, wrk)
M.REQUEST_JSON = '{"model":"ideogram/character","callBackUrl":"https://your-domain.com/api/callback",'
  .. '"input":{"prompt":"A fisherman mending nets on a pier at dawn, soft light, film grain",'
  .. '"reference_image_urls":["https://file.aiquickdraw.com/custom-page/akr/section-images/1755767145415pvz49dpi.webp"],'
  .. '"rendering_speed":"BALANCED","style":"AUTO","expand_prompt":true,"num_images":"1",'
  .. '"image_size":"square_hd","negative_prompt":"blurry"}}'

M.CREATE_RESPONSE = '{"code":200,"msg":"success","data":{"taskId":"' .. M.TASK_ID .. '"}}'

-- recordInfo of a finished task: param and resultJson are JSON documents inside strings
local function jstring(s) return '"' .. s:gsub('[\\"]', "\\%0") .. '"' end
M.RECORD_RESPONSE = '{"code":200,"msg":"success","data":{"taskId":"' .. M.TASK_ID .. '",'
  .. '"model":"ideogram/character","state":"success",'
  .. '"param":' .. jstring(M.REQUEST_JSON) .. ','
  .. '"resultJson":' .. jstring('{"resultUrls":["' .. M.RESULT_URL .. '"]}') .. ','
  .. '"failCode":"","failMsg":"","costTime":15000,"completeTime":1765179937911,'
  .. '"createTime":1765179922911,"updateTime":1765179937911}}'

return M
