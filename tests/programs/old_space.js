// Fills V8's old space with live 1 MiB arrays of doubles until something stops it.
const held = [];
for (;;) {
  held.push(new Array(1 << 17).fill(1.5));
}
