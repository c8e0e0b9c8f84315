def worker(req)
  text = File.read("/data/message.txt").strip
  wrote = begin
    File.write("/data/new.txt", "x")
    "written"
  rescue SystemCallError => e
    e.class.name
  end
  Response.new("read=#{text} write=#{wrote}")
end
