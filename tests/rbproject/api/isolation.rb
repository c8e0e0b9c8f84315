$seen = []

def worker(req)
  $seen << req.url
  # What an earlier request left behind, if anything did: all nil.
  leaked = [defined?(LEFT_BEHIND), $left_behind, Object.method_defined?(:left_behind)]
  Object.const_set(:LEFT_BEHIND, req.url)
  $left_behind = req.url
  Object.define_method(:left_behind) { 1 }
  Response.new("seen=#{$seen.length} leaked=#{leaked.inspect} random=#{rand}")
end
