# The worker API of wws Ruby workers (Request, Response, Cache), written from
# the specification. The runner loads it before the worker, as wws's wrapper
# does with require_relative "./poly".
require "json"

# wws's newer polyfill sends a non-UTF-8 (binary) body as base64; the older
# one always sends the body as it is. The runner sets this per .wws.toml.
WWS_BINARY_AS_BASE64 = true

def json_to_request(input)
  data = JSON.parse(input)
  Request.new(data["url"], data["body"], data["method"], data["headers"], data["params"], data["kv"])
end

class Cache
  @@kv = {}

  def self.init(kv)
    @@kv = (kv || {}).dup
  end

  def self.get(key)
    @@kv[key.to_s]
  end

  def self.set(key, value)
    @@kv[key.to_s] = value.to_s
  end

  def self.dump
    @@kv
  end
end

class Request
  attr_reader :url, :body, :method, :headers, :params

  def initialize(url, body, method, headers, params, kv)
    @url = url
    @body = body
    @method = method
    @headers = headers || {}
    @params = params || {}
    Cache.init(kv)
  end
end

class Response
  attr_accessor :body, :status_code, :headers

  def initialize(body, status_code = 200, headers = {})
    @body = body
    @status_code = status_code
    @headers = headers
  end

  def self.ok(body)
    new(body, 200)
  end

  def self.created(body)
    new(body, 201)
  end

  def self.not_found(body)
    new(body, 404)
  end

  def to_s
    out = { data: @body, status: @status_code, headers: @headers, kv: Cache.dump }
    if WWS_BINARY_AS_BASE64
      binary = @body.is_a?(String) && @body.encoding.name != "UTF-8"
      out[:data] = binary ? [@body].pack("m0") : @body
      out[:base64] = binary
    end
    JSON.generate(out)
  end
end
