# Evaluated by the runner once per worker, at load: loads the polyfill and the
# worker like wws's wrapper, and defines the per-request entry. The runner
# snapshots the interpreter after this; every request evaluates
# "__wws_handle" on a fresh copy of that state.
begin
  $0 = "/src/index.rb"
  require "/src/poly"
  load "/src/index.rb"
  raise NameError, "the script defines no worker(request) method" unless respond_to?(:worker, true)
rescue Exception => e
  $stderr.puts(e.full_message(highlight: false))
  $stderr.flush
  raise
end

def __wws_handle
  # Every request starts from the same snapshot: reseed the generator.
  srand
  response = worker(json_to_request($stdin.gets.to_s))
  $stdout.print("#{response}\n")
  $stdout.flush
  nil
rescue Exception => e
  $stderr.puts(e.full_message(highlight: false))
  $stderr.flush
  raise
end

$stdout.flush
GC.start
