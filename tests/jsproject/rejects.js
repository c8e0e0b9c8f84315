export default { async fetch() { await null; throw new RangeError("rejected on purpose"); } };
