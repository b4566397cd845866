# The image app's routes in Rails' own router (ActionDispatch) on Puma, with Rack::MethodOverride
# as a default Rails stack has it, behind tokengate in the differential test.
# `X-Served: route=…;album=…` says which route and album the app served.
require "action_dispatch"
require "erb"
require "rack"
require "rack/handler/puma"

def served(route)
  lambda do |env|
    album = (env["action_dispatch.request.path_parameters"] || {})[:album].to_s
    headers = {
      "Content-Type" => "text/plain",
      "X-Served" => "route=#{route};album=#{ERB::Util.url_encode(album)}"
    }
    [200, headers, ["#{route} #{album}\n"]]
  end
end

routes = ActionDispatch::Routing::RouteSet.new
routes.draw do
  get "albums/:album", to: served("album")
  get "albums/:album/images", to: served("list")
  match "albums/:album/images", to: served("upload"), via: %i[post put]
  delete "albums/:album/images/:image", to: served("delete")
  match "albums/:album/captions", to: served("caption"), via: %i[put patch]
  get "albums/:album/fullscreen", to: served("fullscreen")
  post "api/v1/token", to: served("legacy_token")
end

app = Rack::Builder.new do
  use Rack::MethodOverride
  run routes
end

Rack::Handler::Puma.run(app, Host: "127.0.0.1", Port: ARGV[0].to_i, Silent: true, Threads: "1:4")
